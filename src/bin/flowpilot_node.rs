//! `flowpilot_node`: serve a flow policy on a ROS 2 graph at a fixed rate.
//! Configuration: ROS parameters (see docs/configuration.md and config/).

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // The control thread never uses candle; keep any pool that might start small.
    flowpilot::pin_threads(1);
    if let Err(e) = flowpilot::ros::run_node() {
        tracing::error!("{e:#}");
        eprintln!("flowpilot_node: {e:#}");
        std::process::exit(1);
    }
}
