//! The `ringmesh-bench` binary; everything is in the library.

fn main() -> std::process::ExitCode {
    bench_harness::cli::main()
}
