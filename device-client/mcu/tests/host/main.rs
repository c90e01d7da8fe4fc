//! Host tests of the MCU agent's flash foundation, on the strict file-backed flash.
//! One test binary, one module per piece.

mod common;

mod agent_store;
mod file_flash;
mod power_cut_swap;
mod update;
