//! Every Kubernetes API call the controller makes, in one place.
//!
//! The Helm chart's RBAC rules are generated from (and tested against) this
//! list, and the controller's own tests record each request it sends and fail
//! on any call that is not listed here, or on a listed call nothing makes.

/// Verbs on resources of one API group that the controller needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// API group (`""` is the core group).
    pub api_group: &'static str,
    /// Resources, subresources as `resource/subresource`.
    pub resources: &'static [&'static str],
    /// RBAC verbs.
    pub verbs: &'static [&'static str],
}

/// The exact set of API calls the controller makes on pipelines and what
/// they own, in every namespace it watches (leader election: see [`LEASE_BY_NAME`]).
pub const PERMISSIONS: &[Permission] = &[
    // The watched resource: list+watch drive the controller, patch adds and
    // removes the finalizer.
    Permission {
        api_group: "sluice.dev",
        resources: &["streampipelines"],
        verbs: &["list", "watch", "patch"],
    },
    Permission {
        api_group: "sluice.dev",
        resources: &["streampipelines/status"],
        verbs: &["patch"],
    },
    // Owned objects: watched, and written with server-side apply, which needs
    // `create` as well as `patch` when the object does not exist yet.
    Permission {
        api_group: "",
        resources: &["configmaps", "services", "serviceaccounts"],
        verbs: &["list", "watch", "create", "patch"],
    },
    Permission {
        api_group: "apps",
        resources: &["statefulsets"],
        verbs: &["list", "watch", "create", "patch"],
    },
    // Only to check that referenced Secrets exist and to read alert webhook
    // URLs; values never leave the controller's memory.
    Permission {
        api_group: "",
        resources: &["secrets"],
        verbs: &["get"],
    },
    // Kubernetes Events (the Recorder creates, then patches a series).
    Permission {
        api_group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
    // Runner pods: watched (by label) so that a pod that cannot run (crash
    // loop, image pull, unschedulable, out of memory) reaches the status at
    // once, and read by name in each reconcile. Never written.
    Permission {
        api_group: "",
        resources: &["pods"],
        verbs: &["get", "list", "watch"],
    },
];

/// Leader election: only in the controller's own namespace, and only on its
/// own Lease (`resourceNames`), so it cannot take over another component's
/// lease. The chart grants these in a Role of its own.
pub const LEASE_BY_NAME: Permission = Permission {
    api_group: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &["get", "patch"],
};

/// Creating the Lease the first time: RBAC cannot restrict `create` by name.
pub const LEASE_CREATE: Permission = Permission {
    api_group: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &["create"],
};
