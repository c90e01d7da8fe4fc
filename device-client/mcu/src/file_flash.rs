//! `FileFlash`: a NOR flash in a host file, strict enough that code passing its tests does
//! not rely on anything real NOR would refuse, and with a power-cut injector.
//!
//! Why strict: a RAM "flash" that accepts any write hides the two classic bugs, writing
//! without erasing and unaligned writes. Here erase works on whole aligned sectors and sets
//! 0xFF; a write must be aligned and may only clear bits (1 -> 0); every access is
//! bounds-checked. Every operation reaches the file at once (fsync on request), so a
//! separate process, such as `mcu-bootloader`, sees it.
//!
//! Power cuts: [`FileFlash::cut_power_after`] lets `n` more erase/write operations through;
//! the next one fails with [`FileFlashError::PowerCut`] and is not applied (or, with
//! [`CutMode::Torn`], half applied), and from then on every operation fails, as if the
//! device were off. Reopen the file to "power on" again.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};

/// What the operation that meets the power cut leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Nothing: the operation never started.
    Clean,
    /// Its first half, in whole write units (a write) or whole sectors (an erase): a write
    /// or a multi-sector erase that stopped midway. A single unit is all or nothing, as the
    /// bootloader's progress words assume of real flash.
    Torn,
}

/// Why a flash operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFlashError {
    /// Offset or length not a multiple of the write (or erase) size.
    NotAligned,
    /// The range runs past the end of the flash.
    OutOfBounds,
    /// The write would turn a 0 bit back into 1 at this offset (NOR needs an erase for that).
    SetsBits {
        /// First offending byte.
        offset: u32,
    },
    /// Power was cut (see [`FileFlash::cut_power_after`]).
    PowerCut,
    /// The backing file failed.
    Io(io::ErrorKind),
}

impl NorFlashError for FileFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            FileFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            FileFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            _ => NorFlashErrorKind::Other,
        }
    }
}

/// A file-backed NOR flash with `WRITE`-byte writes and `ERASE`-byte sectors.
pub struct FileFlash<const WRITE: usize, const ERASE: usize> {
    file: File,
    /// The file's contents, so reads and the bit check need no syscall.
    image: Vec<u8>,
    fsync: bool,
    ops: u64,
    erases: u64,
    cut: Option<(u64, CutMode)>,
    off: bool,
}

impl<const WRITE: usize, const ERASE: usize> FileFlash<WRITE, ERASE> {
    /// Opens `path`, creating an erased (all 0xFF) flash of `size_bytes` if it does not exist.
    /// An existing file must be exactly `size_bytes` long.
    pub fn open(path: &Path, size_bytes: usize, fsync: bool) -> io::Result<Self> {
        if !size_bytes.is_multiple_of(ERASE) || !ERASE.is_multiple_of(WRITE) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "flash size not a multiple of the erase size"));
        }
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let len = file.metadata()?.len();
        let image = if len == 0 {
            let image = vec![0xFF; size_bytes];
            file.write_all_at(&image, 0)?;
            image
        } else if len == size_bytes as u64 {
            let mut image = vec![0; size_bytes];
            file.read_exact_at(&mut image, 0)?;
            image
        } else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "flash file has the wrong size"));
        };
        if fsync {
            file.sync_all()?;
        }
        Ok(FileFlash { file, image, fsync, ops: 0, erases: 0, cut: None, off: false })
    }

    /// After `ops` more erase/write operations, the next one meets a power cut.
    pub fn cut_power_after(&mut self, ops: u64, mode: CutMode) {
        self.cut = Some((self.ops + ops, mode));
    }

    /// Erase and write operations performed (applied or refused) since open.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Erase operations that started (applied in full or in part) since open.
    pub fn erases(&self) -> u64 {
        self.erases
    }

    /// Whether a power cut has happened.
    pub fn is_off(&self) -> bool {
        self.off
    }

    /// The whole flash as it is now (what the file holds).
    pub fn contents(&self) -> &[u8] {
        &self.image
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, FileFlashError> {
        let start = offset as usize;
        match start.checked_add(len) {
            Some(end) if end <= self.image.len() => Ok(start..end),
            _ => Err(FileFlashError::OutOfBounds),
        }
    }

    /// Counts a mutating operation; says how much of it to apply.
    fn power(&mut self) -> Result<Option<CutMode>, FileFlashError> {
        if self.off {
            return Err(FileFlashError::PowerCut);
        }
        let index = self.ops;
        self.ops += 1;
        match self.cut {
            Some((at, mode)) if index >= at => {
                self.off = true;
                Ok(Some(mode))
            }
            _ => Ok(None),
        }
    }

    fn persist(&mut self, range: core::ops::Range<usize>) -> Result<(), FileFlashError> {
        let io = |e: io::Error| FileFlashError::Io(e.kind());
        self.file.write_all_at(&self.image[range.clone()], range.start as u64).map_err(io)?;
        if self.fsync {
            self.file.sync_data().map_err(io)?;
        }
        Ok(())
    }
}

impl<const WRITE: usize, const ERASE: usize> ErrorType for FileFlash<WRITE, ERASE> {
    type Error = FileFlashError;
}

impl<const WRITE: usize, const ERASE: usize> ReadNorFlash for FileFlash<WRITE, ERASE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        if self.off {
            return Err(FileFlashError::PowerCut);
        }
        let range = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.image[range]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.image.len()
    }
}

impl<const WRITE: usize, const ERASE: usize> NorFlash for FileFlash<WRITE, ERASE> {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if self.off {
            return Err(FileFlashError::PowerCut);
        }
        if to < from {
            return Err(FileFlashError::OutOfBounds);
        }
        let range = self.range(from, (to - from) as usize)?;
        if range.start % ERASE != 0 || range.end % ERASE != 0 {
            return Err(FileFlashError::NotAligned);
        }
        let end = match self.power()? {
            None => range.end,
            Some(CutMode::Clean) => return Err(FileFlashError::PowerCut),
            Some(CutMode::Torn) => range.start + range.len() / ERASE / 2 * ERASE,
        };
        self.erases += 1;
        self.image[range.start..end].fill(0xFF);
        self.persist(range.start..end)?;
        if self.off {
            return Err(FileFlashError::PowerCut);
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        if self.off {
            return Err(FileFlashError::PowerCut);
        }
        let range = self.range(offset, bytes.len())?;
        if range.start % WRITE != 0 || !bytes.len().is_multiple_of(WRITE) {
            return Err(FileFlashError::NotAligned);
        }
        // Checked before power is counted: a refused write is a bug, not a flash operation.
        let current = &self.image[range.clone()];
        if let Some(i) = current.iter().zip(bytes).position(|(old, new)| new & !old != 0) {
            return Err(FileFlashError::SetsBits { offset: offset.saturating_add(i as u32) });
        }
        let end = match self.power()? {
            None => range.end,
            Some(CutMode::Clean) => return Err(FileFlashError::PowerCut),
            Some(CutMode::Torn) => range.start + bytes.len() / WRITE / 2 * WRITE,
        };
        self.image[range.start..end].copy_from_slice(&bytes[..end - range.start]);
        self.persist(range.start..end)?;
        if self.off {
            return Err(FileFlashError::PowerCut);
        }
        Ok(())
    }
}
