//! The `openthreat` binary: parses the command line and hands over to [`openthreat::cli`].

fn main() -> std::process::ExitCode {
    openthreat::cli::main()
}
