//! The bootloader as a separate step, for host integration tests: runs embassy-boot's
//! `prepare_boot` on a flash file laid out as `layout::HOST` and prints what it did as one
//! line of JSON, e.g. `{"outcome":"swapped","state":"swap"}`.
//!
//! Usage: `mcu-bootloader [--layout host|device] <flash-file>` (`device`: `layout::HOST_DEVICE`,
//! the layout `mcu-agent` uses). Exit 0 on success, 1 if the bootloader failed,
//! 2 on a usage or file error. The file must exist (a missing one is an error, not a fresh
//! flash: booting nothing is never what a test meant).

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::ExitCode;

use embassy_boot::{AlignedBuffer, BlockingFirmwareState};
use embassy_sync::blocking_mutex::Mutex;
use otamesh_mcu::boot::{run_bootloader, Partitions};
use otamesh_mcu::layout::{HOST, HOST_DEVICE};
use otamesh_mcu::HostFlash;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut layout = HOST;
    if args.first().is_some_and(|a| a == "--layout") && args.len() >= 2 {
        layout = match args[1].to_str() {
            Some("host") => HOST,
            Some("device") => HOST_DEVICE,
            _ => {
                eprintln!("mcu-bootloader: --layout is host or device");
                return ExitCode::from(2);
            }
        };
        args.drain(..2);
    }
    let [path] = &args[..] else {
        eprintln!("usage: mcu-bootloader [--layout host|device] <flash-file>");
        return ExitCode::from(2);
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        eprintln!("mcu-bootloader: {} is not a file", path.display());
        return ExitCode::from(2);
    }
    let flash = match HostFlash::open(&path, layout.flash_size_bytes as usize, true) {
        Ok(f) => Mutex::new(RefCell::new(f)),
        Err(e) => {
            eprintln!("mcu-bootloader: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let mut buf = AlignedBuffer([0u8; HOST.boot_buffer_bytes as usize]);
    let outcome = match run_bootloader(&layout, &flash, &mut buf.0) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mcu-bootloader: {e:?}");
            return ExitCode::from(1);
        }
    };
    // The state the application will see (`get_state`), printed next to the outcome.
    let state = match Partitions::new(&layout, &flash) {
        Ok(parts) => {
            let mut word = AlignedBuffer([0u8; HOST.write_size_bytes as usize]);
            BlockingFirmwareState::new(parts.bootloader_state, &mut word.0).get_state().map(state_name)
        }
        Err(e) => {
            eprintln!("mcu-bootloader: {e:?}");
            return ExitCode::from(1);
        }
    };
    match state {
        Ok(state) => {
            println!("{{\"outcome\":\"{}\",\"state\":\"{state}\"}}", outcome.name());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcu-bootloader: reading the state: {e:?}");
            ExitCode::from(1)
        }
    }
}

fn state_name(state: embassy_boot::State) -> &'static str {
    match state {
        embassy_boot::State::Boot => "boot",
        embassy_boot::State::Swap => "swap",
        embassy_boot::State::Revert => "revert",
        embassy_boot::State::DfuDetach => "dfu-detach",
    }
}
