//! Every label value the metrics use, written once. The code that reports
//! a value names it from here, the metrics pre-register every value from
//! here (so that each series exists at 0 from the start), and the fuzz
//! targets check against the same lists.

/// The `reason` of `leasehold_rejected_messages_total`: why a peer message
/// or connection was refused, or a fencing token not used.
pub mod reason {
    /// A frame over the size cap.
    pub const OVERSIZE: &str = "oversize";
    /// A frame that does not decode.
    pub const MALFORMED: &str = "malformed";
    /// A connection whose first bytes are not a leasehold handshake.
    pub const NOT_A_PEER: &str = "not_a_peer";
    pub const VERSION: &str = "version";
    pub const CLUSTER_ID: &str = "cluster_id";
    pub const UNKNOWN_PEER: &str = "unknown_peer";
    pub const WRONG_ADDRESSEE: &str = "wrong_addressee";
    pub const STALE_TERM: &str = "stale_term";
    pub const CONFLICTING_LEADER: &str = "conflicting_leader";
    pub const TERM_TOO_FAR: &str = "term_too_far";
    /// A message of another group of the same cluster id (a group created
    /// again, DESIGN §2b).
    pub const OTHER_GROUP: &str = "other_group";
    /// A peer connection over the transport's cap.
    pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
    /// A refused TLS handshake.
    pub const TLS: &str = "tls";
    /// The etcd backend was handed a token not above one it saw before.
    pub const TOKEN_REGRESSED: &str = "token_regressed";

    pub const ALL: [&str; 14] = [
        OVERSIZE,
        MALFORMED,
        NOT_A_PEER,
        VERSION,
        CLUSTER_ID,
        UNKNOWN_PEER,
        WRONG_ADDRESSEE,
        STALE_TERM,
        CONFLICTING_LEADER,
        TERM_TOO_FAR,
        OTHER_GROUP,
        TOO_MANY_CONNECTIONS,
        TLS,
        TOKEN_REGRESSED,
    ];
}

/// The `path` of `leasehold_api_requests_total`: the paths the API and the
/// metrics listener serve. Any other path counts as [`OTHER_PATH`], so that
/// a scanner cannot create unbounded label values.
pub const API_PATHS: [&str; 16] = [
    "/v1/leader",
    "/v1/watch",
    "/v1/status",
    "/v1/position",
    "/v1/step-down",
    "/v1/transfer",
    "/healthz",
    "/readyz",
    "/primary",
    "/leader",
    "/replica",
    "/",
    "/master",
    "/read-write",
    "/read-only",
    "/metrics",
];
pub const OTHER_PATH: &str = "other";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn each_list_names_each_value_once() {
        assert_eq!(reason::ALL.iter().collect::<BTreeSet<_>>().len(), reason::ALL.len());
        assert_eq!(API_PATHS.iter().collect::<BTreeSet<_>>().len(), API_PATHS.len());
        assert!(!API_PATHS.contains(&OTHER_PATH));
    }
}
