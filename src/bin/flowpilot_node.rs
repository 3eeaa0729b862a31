fn main() {
    let ctx = r2r::Context::create().unwrap();
    let _node = r2r::Node::create(ctx, "flowpilot", "").unwrap();
}
