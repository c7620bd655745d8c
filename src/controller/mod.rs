//! What both reconcilers share: the context, requeue timing, Events, and writing owned objects
//! only when they differ.

pub mod apply;
pub mod context;
pub mod health;
pub mod timing;

pub use context::Context;

use k8s_openapi::NamespaceResourceScope;
use kube::{Api, Client, Resource};

/// An Api over one namespace, or over all of them.
pub fn scoped_api<K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>>(
    client: &Client,
    namespace: &Option<String>,
) -> Api<K> {
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}
