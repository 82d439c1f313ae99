//! Integration tests: real orchestrators and workers, in-process on
//! `127.0.0.1:0` or as `d8` child processes on loopback. Nothing leaves this machine.

mod it;
