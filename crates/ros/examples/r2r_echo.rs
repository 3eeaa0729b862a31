//! Minimal r2r echo node: republishes each Float64MultiArray it receives.
//! The baseline for the round-trip benchmark (bench/node_bench.py): the
//! same r2r/Fast DDS path as flowpilot_node, with no policy and no loop.
use futures::stream::StreamExt;
use futures::task::LocalSpawnExt;

fn main() -> anyhow::Result<()> {
    let ctx = r2r::Context::create()?;
    let mut node = r2r::Node::create(ctx, "r2r_echo", "")?;
    let qos = r2r::QosProfile::default().keep_last(10);
    let sub = node.subscribe::<r2r::std_msgs::msg::Float64MultiArray>(
        "/echo/in",
        qos.clone().best_effort(),
    )?;
    let publisher = node
        .create_publisher::<r2r::std_msgs::msg::Float64MultiArray>("/echo/out", qos.reliable())?;
    let mut pool = futures::executor::LocalPool::new();
    pool.spawner().spawn_local(sub.for_each(move |m| {
        let _ = publisher.publish(&m);
        futures::future::ready(())
    }))?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to a static atomic.
        unsafe { libc::signal(sig, handler as *const () as libc::sighandler_t) };
    }
    while !STOP.load(std::sync::atomic::Ordering::SeqCst) {
        node.spin_once(std::time::Duration::from_millis(1));
        pool.run_until_stalled();
    }
    Ok(())
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn handler(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}
