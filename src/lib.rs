//! artifact-operator: S3 artifact stores for ML pipelines as Kubernetes custom resources.
//!
//! Layout: [`api`] holds the custom resources; [`s3path`], [`ca_bundle`], [`resolve`], [`owner`],
//! [`render`] and [`conditions`] are pure; [`reason`] lists every condition and Event reason (and
//! [`reason::Failure`], one with its message); [`aws`] is the AWS edge (S3, IAM, STS); [`zenml`] the
//! edge to ZenML servers' REST API; [`bulkhead`] keeps each external server those edges call to a
//! share of the workers; [`identity`] proves who the operator, a store's keys or a ServiceAccount
//! are; [`check`] proves a workload pod's own access from inside it; [`store`] and [`stack`] are the
//! two reconcilers; [`controller`] what they share (the caches and their index, apply helpers,
//! per-object memory); [`operator`] the process.

pub mod api;
pub mod aws;
pub mod bulkhead;
pub mod ca_bundle;
pub mod check;
pub mod conditions;
pub mod controller;
pub mod generate;
pub mod identity;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod owner;
pub mod reason;
pub mod render;
pub mod resolve;
pub mod s3path;
pub mod stack;
pub mod store;
pub mod zenml;
