//! otamesh edge node. The libp2p mesh, chunk store and device service arrive with issue 3.
fn main() {
    eprintln!("edge-node: not built yet; see issue 3 (the mesh)");
    std::process::exit(1);
}
