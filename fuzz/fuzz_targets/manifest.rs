//! Untrusted manifest bytes: the zero-copy view and the owned decoder must agree, never
//! panic, and a decoded manifest must re-encode to exactly the input (one encoding per
//! manifest, so a signature over the bytes pins every field).
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::manifest::{ManifestView, ReleaseManifest};

fuzz_target!(|data: &[u8]| {
    let view = ManifestView::new_checked(data);
    let owned = ReleaseManifest::decode(data);
    match (view, owned) {
        (Ok(view), Ok(owned)) => {
            assert_eq!(owned.encode().expect("a decoded manifest re-encodes"), data);
            // The accessors are documented as infallible after `new_checked`.
            assert_eq!(view.chunks().count(), view.chunk_count() as usize);
            assert_eq!(view.chunks().collect::<Vec<_>>(), owned.chunks);
            assert_eq!(view.stored_bytes(), owned.stored_bytes());
            assert!(view.chunk(view.chunk_count()).is_none());
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (view, owned) => panic!("view {:?} and owned {:?} disagree", view.err(), owned.err()),
    }
});
