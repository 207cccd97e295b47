//! Arbitrary bytes as a DNS message, whole and as a cut prefix (what the
//! kernel's bounded copy hands the agent): the parser and the name
//! measures must return, never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/pipeline/decode/dns_message.rs"]
#[allow(dead_code)]
mod dns_message;

fuzz_target!(|data: &[u8]| {
    for cut in [false, true] {
        if let Ok(message) = dns_message::parse(data, cut) {
            let shape = dns_message::NameShape::of(&message.qname);
            assert!(shape.longest_label as usize <= message.qname.len());
            let _ = (dns_message::qtype_name(message.qtype), dns_message::rcode_name(message.rcode));
        }
    }
});
