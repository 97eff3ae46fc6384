//! The contract model: `pake-contract` reads a contract for the engine exactly as it
//! does for the generator and its linter. Re-exported so the engine's modules, and users
//! of this crate, name it `conformance::contract::…`.

pub use pake_contract::*;
