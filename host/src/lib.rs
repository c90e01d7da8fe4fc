//! The contracts every std binary of otamesh has with its host OS, each with one owner:
//! how a command-line tool fails (`cli`), durable file writes (`fs`), running an operator's
//! command (`process`), secrets from the OS's random source (`random`), the TUF updater's
//! trusted metadata on disk (`tuf_dir`). The sans-IO core (`protocol`) never touches the
//! host; the daemons, the seeder and the Linux agent do it through here.
#![deny(missing_docs)]

pub mod cli;
pub mod fs;
pub mod process;
pub mod random;
pub mod tuf_dir;
