//! The containerd log driver on its own, for the controller's integration
//! tests (which cannot run the `steward` CLI). Same argv contract as
//! `steward log-driver`: `steward-log-driver log-driver ROOT[?max-size=..&max-files=..]`.

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = match args.as_slice() {
        [_, flag, root] if flag == steward_controller::containerd::logdriver::LOG_DRIVER_ARG => root.clone(),
        _ => {
            eprintln!("usage: steward-log-driver log-driver ROOT (run by containerd's shim)");
            std::process::exit(2);
        }
    };
    if let Err(e) = steward_controller::containerd::logdriver::run_log_driver(Path::new(&root)) {
        eprintln!("log driver: {e}");
        std::process::exit(1);
    }
}
