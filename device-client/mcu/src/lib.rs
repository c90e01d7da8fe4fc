//! otamesh's MCU update agent.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod download;
pub mod edge_link;
pub mod find;
