//! `flowpilot_node`: serve a flow policy on a ROS 2 graph at a fixed rate.
//! Configuration: ROS parameters (see docs/configuration.md and config/).
//! The code lives in crates/ros; this file only names the installed binary.

fn main() {
    flowpilot_ros::main()
}
