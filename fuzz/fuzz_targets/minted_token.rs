//! Minted keys (`vkm_…`) as a caller writes them: any text read as one, and a real one hidden in
//! any surrounding bytes. Input: a mode byte, then the text (or: a split byte, a label, and the
//! bytes around the key).
//!
//! Invariants: no panic; what `MintedToken::parse` reads has the shape `is_minted_token` accepts,
//! and is signed only if it is exactly what the grant minted; a real minted key (under a run or
//! not) anywhere in a body, whatever precedes or follows it, is found by the scanner that keeps
//! tokens from reaching a vendor.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_key_server::token::appears_in;
use vault_key_wire::{is_minted_token, GrantCredential, KeyCaveats, MintedToken, RunCaveats};

fn grant() -> GrantCredential {
    GrantCredential::from_parts("grt_FuzzFuzzFuzzFuzzFuzzFu", &"s".repeat(43)).expect("well formed")
}

fn caveats(label: &str) -> KeyCaveats {
    KeyCaveats {
        grant_id: grant().id().to_owned(),
        key_id: "key_FuzzFuzzFuzzFuzzFuzzFu".to_owned(),
        label: label.to_owned(),
        vendor: "stripe".to_owned(),
        daily_cap_micros: 1_000_000,
        allowed_endpoints: vec!["/v1/customers".parse().expect("a pattern")],
        allowed_methods: None,
        issued_at: 0,
        expires_at: 60,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(minted) = MintedToken::parse(text) {
            assert!(is_minted_token(text));
            assert!(appears_in(text.as_bytes()));
            if minted.is_signed_by(grant().secret()) {
                let remade = match minted.run() {
                    None => grant().mint(minted.caveats()),
                    Some(run) => grant().open_run(run).mint(minted.caveats()),
                };
                assert_eq!(remade, text, "signed, so exactly as minted");
            }
        }
        return;
    }
    // A real key, minted with a label from the input, between two pieces of the input.
    let Some((&split, rest)) = rest.split_first() else {
        return;
    };
    let label_len = usize::from(split % 64).min(rest.len());
    let (label, around) = rest.split_at(label_len);
    let label = String::from_utf8_lossy(label);
    let token = if split >= 128 {
        let run = RunCaveats {
            run_id: "grt_RunRunRunRunRunRunRunR".to_owned(),
            label_prefix: String::new(),
            daily_cap_micros: 1,
            expires_at: 60,
        };
        grant().open_run(&run).mint(&caveats(&label))
    } else {
        grant().mint(&caveats(&label))
    };
    let cut = around.len() / 2;
    let mut body = around[..cut].to_vec();
    body.extend_from_slice(token.as_bytes());
    body.extend_from_slice(&around[cut..]);
    assert!(
        appears_in(&body),
        "a minted key in the middle of the body was not found"
    );
});
