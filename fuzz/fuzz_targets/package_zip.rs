//! Module packages (a zip of `module.toml` or SafeKit's `userconfig.xml`
//! and `bin/`): any bytes get contents or an error, within the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(package) = holdfast_package::Package::from_zip(data) {
        // What is read is written and read back the same.
        let zip = package.to_zip().unwrap();
        assert_eq!(holdfast_package::Package::from_zip(&zip).unwrap(), package);
    } else {
        let _ = holdfast_package::read_zip(data);
    }
});
