//! The deterministic network simulator, shared by the test files that
//! `mod sim;` it. Not every test file uses every helper.
#![allow(dead_code)]

pub mod apps;
pub mod net;
pub mod pcap;
pub mod segment;
pub mod transfer;
