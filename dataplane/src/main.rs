//! The `ringmesh` binary; everything lives in the `dataplane` library.

fn main() -> std::process::ExitCode {
    dataplane::cli::main()
}
