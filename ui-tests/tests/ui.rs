//! Compile-time behaviour of `#[vault_key]`: every supported shape compiles (and runs), every
//! diagnostic is the one in `fail/*.stderr`. See `README.md` for `TRYBUILD=overwrite`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("pass/*.rs");
    cases.compile_fail("fail/*.rs");
}
