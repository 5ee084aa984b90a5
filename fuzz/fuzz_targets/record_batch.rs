//! Record batches as a Produce request carries them: splitting, header parsing, CRC and
//! record validation (what a partition checks before it appends), offset placement.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let records = Bytes::copy_from_slice(data);
    if let Ok(batches) = keel_proto::batch::split_batches(&records) {
        for (_, batch) in batches {
            let _ = keel_proto::batch::validate_batch(&batch);
            let _ = keel_proto::batch::place(batch, 42, 3);
        }
    }
    for b in keel_proto::batch::batches(data).take(1000) {
        if b.is_err() {
            break;
        }
    }
    let _ = keel_proto::batch::skip_before(data, 17);
    let _ = keel_proto::batch::validate_batch(data);
});
