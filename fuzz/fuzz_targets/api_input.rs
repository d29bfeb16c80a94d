//! What the HTTPS API and `holdfast cluster join` read from users: the
//! API's settings (`api.toml`), bearer tokens, session cookies, enrolment
//! tokens and an operator's certificates.
#![no_main]

use holdfast_api::access::{secrets, sessions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = holdfast_api::Settings::parse(text);
    let _ = secrets::parse_token(text);
    let _ = sessions::from_cookie_header(text);
    let _ = holdfast_pki::EnrolmentToken::parse(text);
    let _ = holdfast_pki::certificate_facts(text);
});
