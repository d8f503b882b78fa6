//! corrald: the corral CRI server.

fn main() -> anyhow::Result<()> {
    agent::daemon::main()
}
