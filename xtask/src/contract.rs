//! The four contracts and what their generated crates are called. Reading a contract is
//! `pake-contract`'s, the same reading the conformance engine uses; it is re-exported
//! here for the generator's modules.

pub use pake_contract::{Contract, METHODS, Operation, ParamLocation, RequestBody, Response, pointer_token};

/// One contract and the names of what is generated from it.
pub struct ContractInfo {
    /// File name under `openapi/`.
    pub file: &'static str,
    /// Short name used for crate and directory names (`mesh` → `pake-mesh-client`).
    pub short: &'static str,
    /// Name of the generated server trait.
    pub trait_name: &'static str,
}

pub const CONTRACTS: &[ContractInfo] = &[
    ContractInfo { file: "api-gateway.yaml", short: "gateway", trait_name: "GatewayApi" },
    ContractInfo { file: "service-mesh.yaml", short: "mesh", trait_name: "ServiceMeshApi" },
    ContractInfo { file: "monitoring.yaml", short: "monitoring", trait_name: "MonitoringApi" },
    ContractInfo { file: "performance.yaml", short: "performance", trait_name: "PerformanceApi" },
];
