//! Broadside: bulk SMS campaigns and transactional messages over gRPC, sent at
//! the provider's full permitted rate, never lost or doubled, with exact live
//! counts.
//!
//! The crate is laid out by concern, and dependencies point one way:
//!
//! - [`domain`]: pure types and rules (ids, phone numbers, states, counts,
//!   retry policy). Imports nothing else of ours.
//! - [`store`]: SeaORM entities and every SQL statement. Knows `domain`.
//! - [`provider`]: tower services that send one SMS (simulator, Twilio).
//!   Knows `domain`, never the database.
//! - [`engine`]: claims, paces, sends, records, rescues. Knows `store`,
//!   `provider`, `progress`, `domain`.
//! - [`progress`]: live counts fanned out to watchers, across replicas.
//! - [`api`]: the gRPC services; protobuf in and out, one error mapping.
//! - [`server`], [`config`], [`telemetry`], [`cli`]: wiring.
//! - [`fake_twilio`]: a loopback Twilio for tests and the benchmark.

pub mod api;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod fake_twilio;
pub mod progress;
pub mod provider;
pub mod server;
pub mod store;
pub mod telemetry;

/// The generated protobuf types and gRPC stubs of `broadside.v1`.
pub mod pb {
    tonic::include_proto!("broadside.v1");

    /// The encoded descriptors of `proto/`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/broadside_descriptor.bin"));
}
