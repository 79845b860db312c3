//! Feeds arbitrary bytes to the scanner, whole and in chunks, as a file and as a bare data set
//! in each native syntax. The scanner must return a result or an error: never panic, hang or
//! allocate by a length it read.
#![no_main]

use dicomvault_native::scan::{NullSink, Parser, ScanOptions};
use libfuzzer_sys::fuzz_target;

const SYNTAXES: [Option<&str>; 4] =
    [None, Some("1.2.840.10008.1.2"), Some("1.2.840.10008.1.2.1"), Some("1.2.840.10008.1.2.2")];

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else { return };
    let options = ScanOptions {
        wanted: vec![(0x0010_0010, *b"PN"), (0x0020_000D, *b"UI")],
        transfer_syntax: SYNTAXES[usize::from(control & 3)].map(str::to_string),
        allow_truncated: control & 4 != 0,
    };
    let chunk = usize::from(control >> 3) + 1;
    let mut parser = Parser::new(options);
    let mut sink = NullSink;
    for piece in body.chunks(chunk) {
        if parser.feed(piece, &mut sink).is_err() {
            return;
        }
    }
    let _ = parser.finish(&mut sink);
});
