//! FileFlash refuses what real NOR refuses, persists everything, and cuts power on cue.

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};
use otamesh_mcu::file_flash::{CutMode, FileFlashError};

use crate::common::{open_host, TempFlash};

#[test]
fn fresh_flash_is_erased() {
    let t = TempFlash::new("fresh");
    let f = open_host(&t.path);
    assert!(f.contents().iter().all(|&b| b == 0xFF));
}

#[test]
fn refuses_unaligned_writes_and_erases() {
    let t = TempFlash::new("unaligned");
    let mut f = open_host(&t.path);
    assert_eq!(f.write(2, &[0; 4]), Err(FileFlashError::NotAligned));
    assert_eq!(f.write(4, &[0; 3]), Err(FileFlashError::NotAligned));
    assert_eq!(f.erase(4, 4096), Err(FileFlashError::NotAligned));
    assert_eq!(f.erase(0, 100), Err(FileFlashError::NotAligned));
    assert_eq!(f.write(2, &[0; 4]).unwrap_err().kind(), NorFlashErrorKind::NotAligned);
    assert_eq!(f.ops(), 0, "refused operations are not flash operations");
    assert!(f.contents().iter().all(|&b| b == 0xFF));
}

#[test]
fn refuses_writes_that_set_bits_without_erase() {
    let t = TempFlash::new("setbits");
    let mut f = open_host(&t.path);
    f.write(8, &[0xF0, 0xFF, 0x00, 0xAA]).unwrap();
    // Clearing more bits is fine, rewriting the same value too.
    f.write(8, &[0xF0, 0x7F, 0x00, 0x0A]).unwrap();
    f.write(8, &[0xF0, 0x7F, 0x00, 0x0A]).unwrap();
    // 0x0F would set the low nibble of 0xF0 back to 1.
    assert_eq!(f.write(8, &[0x0F, 0x7F, 0x00, 0x0A]), Err(FileFlashError::SetsBits { offset: 8 }));
    assert_eq!(f.write(8, &[0x00, 0x7F, 0x01, 0x00]), Err(FileFlashError::SetsBits { offset: 10 }));
    assert_eq!(f.write(8, &[0; 4]).map(|_| ()), Ok(()));
    f.erase(0, 4096).unwrap();
    assert!(f.contents()[..4096].iter().all(|&b| b == 0xFF));
    f.write(8, &[0x0F; 4]).unwrap();
}

#[test]
fn refuses_out_of_bounds() {
    let t = TempFlash::new("bounds");
    let mut f = open_host(&t.path);
    let end = f.capacity() as u32;
    let mut buf = [0u8; 8];
    assert_eq!(f.read(end - 4, &mut buf), Err(FileFlashError::OutOfBounds));
    assert_eq!(f.read(u32::MAX, &mut buf), Err(FileFlashError::OutOfBounds));
    assert_eq!(f.write(end, &[0; 4]), Err(FileFlashError::OutOfBounds));
    assert_eq!(f.erase(end, end + 4096), Err(FileFlashError::OutOfBounds));
    assert_eq!(f.erase(4096, 0), Err(FileFlashError::OutOfBounds));
    assert_eq!(f.read(end - 8, &mut buf), Ok(()));
}

#[test]
fn every_operation_reaches_the_file() {
    let t = TempFlash::new("persist");
    {
        let mut f = open_host(&t.path);
        f.erase(4096, 8192).unwrap();
        f.write(4096, &[1, 2, 3, 4]).unwrap();
        // Dropped without any flush: the file must already hold it.
    }
    let mut f = open_host(&t.path);
    let mut buf = [0u8; 8];
    f.read(4096, &mut buf).unwrap();
    assert_eq!(buf, [1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF]);
    assert_eq!(std::fs::read(&t.path).unwrap(), f.contents());
}

#[test]
fn power_cut_refuses_the_nth_operation_and_everything_after() {
    let t = TempFlash::new("cut");
    let mut f = open_host(&t.path);
    f.cut_power_after(2, CutMode::Clean);
    f.write(0, &[0; 4]).unwrap();
    f.write(4, &[0; 4]).unwrap();
    assert_eq!(f.write(8, &[0; 4]), Err(FileFlashError::PowerCut));
    assert!(f.is_off());
    let mut buf = [0u8; 4];
    assert_eq!(f.read(0, &mut buf), Err(FileFlashError::PowerCut));
    assert_eq!(f.erase(0, 4096), Err(FileFlashError::PowerCut));
    drop(f);
    let f = open_host(&t.path);
    assert_eq!(&f.contents()[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
}

#[test]
fn torn_cut_applies_half_in_whole_units() {
    let t = TempFlash::new("torn");
    let mut f = open_host(&t.path);
    f.cut_power_after(0, CutMode::Torn);
    assert_eq!(f.write(0, &[0; 12]), Err(FileFlashError::PowerCut));
    drop(f);
    let mut f = open_host(&t.path);
    assert_eq!(&f.contents()[..12], &[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    f.write(4096, &[0; 3 * 4096]).unwrap();
    f.cut_power_after(0, CutMode::Torn);
    assert_eq!(f.erase(4096, 4 * 4096), Err(FileFlashError::PowerCut));
    drop(f);
    let f = open_host(&t.path);
    assert!(f.contents()[4096..8192].iter().all(|&b| b == 0xFF), "first of three sectors erased");
    assert!(f.contents()[8192..4 * 4096].iter().all(|&b| b == 0), "the other two untouched");
}
