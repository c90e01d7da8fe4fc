//! otamesh fleet simulator. The engine and the live demo arrive with issues 4 and 5.
fn main() {
    eprintln!("simnet: not built yet; see issue 5");
    std::process::exit(1);
}
