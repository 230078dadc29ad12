//! Builds the busybox OCI archive (from Debian's busybox-static) that
//! `make run` pushes to the local registry, so the example manifests run
//! on a fresh machine: `build-busybox-image OUT_DIR REFERENCE`.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, reference] = args.as_slice() else {
        eprintln!("usage: build-busybox-image OUT_DIR REFERENCE (e.g. data/images 127.0.0.1:5000/busybox:1.36)");
        return ExitCode::from(2);
    };
    match steward_testimage::build_busybox_oci_archive_named(Path::new(dir), reference) {
        Ok(image) => {
            println!("{}", image.archive.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: building the busybox image in {dir}: {e} (is busybox-static installed?)");
            ExitCode::FAILURE
        }
    }
}
