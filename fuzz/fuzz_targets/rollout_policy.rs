//! Untrusted rollout policy bytes: parsing never panics, the zero-copy view and the owned
//! decoder agree, and a policy that parses re-encodes to exactly the input (one encoding per
//! policy, so the `rollouts` role's signature over the bytes pins every field). The gate and
//! the window search run on whatever parses, at an arbitrary time, without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::rollout::{window, EdgeHold, Gate, PolicyView, RolloutPolicy};

fuzz_target!(|data: &[u8]| {
    let view = PolicyView::parse(data);
    let owned = RolloutPolicy::decode(data);
    match (view, owned) {
        (Ok(view), Ok(owned)) => {
            assert_eq!(owned.encode().expect("a decoded policy re-encodes"), data);
            assert_eq!(RolloutPolicy::from_view(&view), owned);
            assert_eq!(view.waves().count(), owned.waves.len());
            assert_eq!(view.windows().count(), owned.windows.len());
            // Evaluate it at a time taken from the input's first bytes.
            let now = i64::from_le_bytes(core::array::from_fn(|i| data.get(9 + i).copied().unwrap_or(0)));
            let device = [data.len() as u8; 32];
            let gate = Gate::default();
            let _ = gate.download_decision(&view, &device, now, EdgeHold::None);
            let _ = gate.switch_decision(&view, &device, "site-1", now, EdgeHold::None);
            if let Some(at) = window::next_open(view.windows(), "site-1", now) {
                assert!(window::is_open(view.windows(), "site-1", at));
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (view, owned) => panic!("view {:?} and owned {:?} disagree", view.err(), owned.err()),
    }
});
