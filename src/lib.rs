//! Passerelle: a FHIR R4 server for care coordination between hospitals and
//! community care. Layers, top to bottom: `http` → `service` (interactions and the
//! single write path) → `fhir` (model, validation) and `search` (plans, index rows)
//! → `store` (PostgreSQL). See docs/architecture.md.

pub mod audit;
pub mod auth;
pub mod coordination;
pub mod delivery;
pub mod error;
pub mod fhir;
pub mod http;
pub mod limits;
pub mod load;
pub mod metrics;
pub mod profile;
pub mod search;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod subscription;
pub mod telemetry;
