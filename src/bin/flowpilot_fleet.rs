//! `flowpilot_fleet`: the fleet learner's link to its robots over ROS 2
//! (started by `flowpilot finetune --from-graph`; docs/fleet.md). The code
//! lives in crates/ros; this file only names the installed binary.

fn main() {
    flowpilot_ros::fleet_learner::main()
}
