//! Host tests of the MCU agent: its flash foundation on the strict file-backed flash, and
//! what it does with bad input from an edge. One test binary, one module per piece.

mod common;

mod agent_store;
mod bad_input;
mod file_flash;
mod power_cut_swap;
mod status_key;
mod update;
