//! The cluster file and the node config file (TOML an operator writes): no panic, and a
//! cluster file that parses yields members and a partition map or a clear error.
#![no_main]

use dynakv_server::config::{ClusterFile, NodeConfigFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = NodeConfigFile::parse(text);
    if let Ok(file) = ClusterFile::parse(text) {
        let _ = file.members();
        let _ = file.partition_map();
    }
});
