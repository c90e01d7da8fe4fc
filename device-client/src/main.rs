//! otamesh Linux device agent. The install engine arrives with issue 4.
fn main() {
    eprintln!("device-client: not built yet; see issue 4");
    std::process::exit(1);
}
