//! Compiling `[[virtual_hosts]]` into route tables, once per config generation.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use config_schema::{
    ConfigSpec, HeaderMatchSpec, HeaderMutationSpec, ListenerProtocol, QueryMatchSpec,
    RateLimitKeySpec, RateLimitSpec, RouteSpec, VirtualHostSpec,
};

use super::action::{
    DirectResponse, FaultAbort, FaultPolicy, HeaderMutation, Mirror, PathRewrite, RateLimit,
    RateLimitKey, Redirect, RetryOnSet, RetryPolicy, Route, RouteAction, Share, WeightedClusters,
};
use super::matcher::{Conditions, HeaderCondition, HeaderTest, QueryCondition, QueryTest};
use super::regex::RegexArena;
use super::table::{
    BytesMap, HostIndex, LenSet, RegexGroup, RegexIndex, RegexMember, RouteConfig, RouteTable,
    VirtualHost,
};
use crate::identity::PrincipalPattern;

/// A config that validation accepted but routing cannot compile. Validation should make these
/// impossible; they exist so that nothing panics if it does not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteCompileError {
    /// A route or listener names a cluster that does not exist.
    #[error("{path}: cluster {cluster:?} is not defined")]
    UnknownCluster {
        /// TOML path of the reference.
        path: String,
        /// The missing name.
        cluster: String,
    },
    /// A listener names a virtual host that does not exist.
    #[error("{path}: virtual host {name:?} is not defined")]
    UnknownVirtualHost {
        /// TOML path of the reference.
        path: String,
        /// The missing name.
        name: String,
    },
    /// A regular expression does not compile.
    #[error("{path}: invalid regular expression: {message}")]
    Regex {
        /// TOML path of the pattern (for a virtual host's combined path regexes, the virtual host).
        path: String,
        /// The regex engine's message.
        message: String,
    },
    /// Anything else that cannot be compiled.
    #[error("{path}: {message}")]
    Invalid {
        /// TOML path.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Compiles the route tables of every HTTP and auto listener in `spec`. `clusters` maps cluster
/// names to their index in the snapshot. A listener serves the virtual hosts it lists, or all of
/// them if it lists none. Each virtual host is compiled once and shared by the listeners serving it.
pub fn compile(
    spec: &ConfigSpec,
    clusters: &HashMap<&str, usize>,
) -> Result<RouteConfig, RouteCompileError> {
    let mut arena = RegexArena::new();
    let mut vhosts = Vec::with_capacity(spec.virtual_hosts.len());
    let mut next_id = 0;
    for (i, vhost) in spec.virtual_hosts.iter().enumerate() {
        let path = format!("virtual_hosts[{i}]");
        vhosts.push(Arc::new(virtual_host(
            &path,
            i,
            vhost,
            clusters,
            &mut arena,
            &mut next_id,
        )?));
    }
    let arena = Arc::new(arena);

    let mut listeners = HashMap::new();
    for (li, listener) in spec.listeners.iter().enumerate() {
        if listener.protocol == ListenerProtocol::Tcp {
            continue;
        }
        let served: Vec<usize> = if listener.virtual_hosts.is_empty() {
            (0..vhosts.len()).collect()
        } else {
            listener
                .virtual_hosts
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    spec.virtual_hosts
                        .iter()
                        .position(|v| v.name == *name)
                        .ok_or_else(|| RouteCompileError::UnknownVirtualHost {
                            path: format!("listeners[{li}].virtual_hosts[{i}]"),
                            name: name.clone(),
                        })
                })
                .collect::<Result<_, _>>()?
        };
        let mut hosts = HostIndex::default();
        let mut table_vhosts = Vec::with_capacity(served.len());
        for &vi in &served {
            let index = u32::try_from(table_vhosts.len()).expect("fewer than 2^32 virtual hosts");
            table_vhosts.push(Arc::clone(&vhosts[vi]));
            for domain in &spec.virtual_hosts[vi].domains {
                let domain = domain.to_ascii_lowercase();
                // Validation rejects a domain claimed twice on one listener; should it happen
                // anyway, the first virtual host keeps it.
                if domain == "*" {
                    hosts.default.get_or_insert(index);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    hosts
                        .suffix
                        .entry(suffix.as_bytes().into())
                        .or_insert(index);
                } else {
                    hosts.exact.entry(domain.as_bytes().into()).or_insert(index);
                }
            }
        }
        let table = RouteTable {
            hosts,
            vhosts: table_vhosts.into(),
            regexes: Arc::clone(&arena),
        };
        listeners.insert(listener.name.as_str().into(), Arc::new(table));
    }
    Ok(RouteConfig { listeners })
}

/// The path condition of a route, normalised.
enum PathKind<'a> {
    Exact(&'a str),
    Regex(&'a str),
    /// Without trailing slashes; never the root.
    Prefix(&'a str),
    /// `/`, or no path condition at all.
    Root,
}

fn path_kind(route: &RouteSpec) -> PathKind<'_> {
    let m = &route.matcher;
    if let Some(p) = &m.path_exact {
        PathKind::Exact(p)
    } else if let Some(p) = &m.path_regex {
        PathKind::Regex(p)
    } else if let Some(p) = &m.path_prefix {
        // Segment prefixes ignore a trailing slash, as Kubernetes Ingress and Gateway API do:
        // `/api/` and `/api` both match `/api`, `/api/` and `/api/x`, never `/apix`.
        match normalize_prefix(p) {
            "/" => PathKind::Root,
            p => PathKind::Prefix(p),
        }
    } else {
        PathKind::Root
    }
}

/// `p` without trailing slashes; `/` for the root.
pub(crate) fn normalize_prefix(p: &str) -> &str {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

fn virtual_host(
    path: &str,
    id: usize,
    spec: &VirtualHostSpec,
    clusters: &HashMap<&str, usize>,
    arena: &mut RegexArena,
    next_id: &mut usize,
) -> Result<VirtualHost, RouteCompileError> {
    let mut routes = Vec::with_capacity(spec.routes.len());
    for (i, route_spec) in spec.routes.iter().enumerate() {
        let route_path = format!("{path}.routes[{i}]");
        let name: Arc<str> = match &route_spec.name {
            Some(name) => name.as_str().into(),
            None => format!("{}#{i}", spec.name).into(),
        };
        routes.push(route(
            &route_path,
            name,
            *next_id,
            route_spec,
            clusters,
            arena,
        )?);
        *next_id += 1;
    }

    // Order within each path class: more conditions first, then config order (a stable sort).
    let mut order: Vec<u32> = (0..routes.len() as u32).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(routes[i as usize].conditions.count()));

    let mut exact: BytesMap<Vec<u32>> = BytesMap::default();
    let mut prefixes: BytesMap<Vec<u32>> = BytesMap::default();
    let mut prefix_lens = LenSet::default();
    let mut regex_routes = Vec::new();
    let mut regex_patterns = Vec::new();
    let mut root = Vec::new();
    for &i in &order {
        match path_kind(&spec.routes[i as usize]) {
            PathKind::Exact(p) => exact.entry(p.as_bytes().into()).or_default().push(i),
            PathKind::Prefix(p) => {
                prefix_lens.insert(p.len());
                prefixes.entry(p.as_bytes().into()).or_default().push(i);
            }
            PathKind::Regex(p) => {
                regex_routes.push(i);
                regex_patterns.push(p);
            }
            PathKind::Root => root.push(i),
        }
    }

    let regex = if regex_routes.is_empty() {
        None
    } else {
        Some(regex_index(path, &regex_routes, &regex_patterns, arena)?)
    };

    let boxed = |map: BytesMap<Vec<u32>>| -> BytesMap<Box<[u32]>> {
        map.into_iter().map(|(k, v)| (k, v.into())).collect()
    };
    Ok(VirtualHost {
        name: spec.name.as_str().into(),
        id,
        rate_limit: spec.rate_limit.as_ref().map(rate_limit),
        routes: routes.into(),
        exact: boxed(exact),
        regex,
        prefixes: boxed(prefixes),
        prefix_lens,
        root: root.into(),
    })
}

/// Groups regex routes (given in precedence order) by the literal start of their patterns; see
/// [`RegexIndex`].
fn regex_index(
    path: &str,
    routes: &[u32],
    patterns: &[&str],
    arena: &mut RegexArena,
) -> Result<RegexIndex, RouteCompileError> {
    let mut grouped: BytesMap<Vec<(RegexMember, &str)>> = BytesMap::default();
    for (rank, (&route, &pattern)) in routes.iter().zip(patterns).enumerate() {
        let regex = arena
            .add(pattern)
            .map_err(|message| RouteCompileError::Regex {
                path: format!("{path}.routes[{route}].match.path_regex"),
                message,
            })?;
        let member = RegexMember {
            rank: rank as u32,
            route,
            regex,
        };
        grouped
            .entry(regex_key(pattern).into())
            .or_default()
            .push((member, pattern));
    }
    let mut index = RegexIndex::default();
    for (key, members) in grouped {
        let set = if members.len() > 1 {
            let patterns: Vec<&str> = members.iter().map(|(_, p)| *p).collect();
            // A pattern the lazy DFA cannot take leaves the group to one-by-one tests.
            arena.add_set(&patterns).ok()
        } else {
            None
        };
        let group = RegexGroup {
            set,
            members: members.into_iter().map(|(m, _)| m).collect(),
        };
        if key.is_empty() {
            index.root = Some(group);
        } else {
            index.key_lens.insert(key.len());
            index.groups.insert(key, group);
        }
    }
    Ok(index)
}

/// The group key of a path regex: the literal text every match starts with (from the regex
/// parser's prefix literals), cut back to before its last `/`; empty if that leaves nothing.
pub(crate) fn regex_key(pattern: &str) -> Vec<u8> {
    let Ok(hir) = regex_syntax::Parser::new().parse(pattern) else {
        return Vec::new();
    };
    let prefixes = regex_syntax::hir::literal::Extractor::new().extract(&hir);
    let common = prefixes.longest_common_prefix().unwrap_or_default();
    if common.first() != Some(&b'/') {
        return Vec::new();
    }
    match common.iter().rposition(|&b| b == b'/') {
        Some(at) if at > 0 => common[..at].to_vec(),
        _ => Vec::new(),
    }
}

fn cluster_index(
    clusters: &HashMap<&str, usize>,
    path: String,
    name: &str,
) -> Result<usize, RouteCompileError> {
    clusters
        .get(name)
        .copied()
        .ok_or_else(|| RouteCompileError::UnknownCluster {
            path,
            cluster: name.to_owned(),
        })
}

fn route(
    path: &str,
    name: Arc<str>,
    id: usize,
    spec: &RouteSpec,
    clusters: &HashMap<&str, usize>,
    arena: &mut RegexArena,
) -> Result<Route, RouteCompileError> {
    let action = if let Some(cluster) = &spec.cluster {
        RouteAction::Cluster(cluster_index(clusters, format!("{path}.cluster"), cluster)?)
    } else if !spec.weighted_clusters.is_empty() {
        let arms = spec
            .weighted_clusters
            .iter()
            .enumerate()
            .map(|(i, arm)| {
                let p = format!("{path}.weighted_clusters[{i}].cluster");
                Ok((cluster_index(clusters, p, &arm.cluster)?, arm.weight))
            })
            .collect::<Result<Vec<_>, RouteCompileError>>()?;
        RouteAction::WeightedClusters(WeightedClusters::new(arms).ok_or_else(|| {
            RouteCompileError::Invalid {
                path: format!("{path}.weighted_clusters"),
                message: "the weights must add up to between 1 and 2^32 - 1".to_owned(),
            }
        })?)
    } else if let Some(r) = &spec.redirect {
        RouteAction::Redirect(Redirect {
            status: r.status,
            scheme: r.scheme.as_deref().map(Into::into),
            host: r.host.as_deref().map(Into::into),
            port: r.port,
            path: r.path.as_deref().map(Into::into),
        })
    } else if let Some(d) = &spec.direct_response {
        RouteAction::DirectResponse(DirectResponse {
            status: d.status,
            body: Bytes::from(d.body.clone()),
            content_type: d.content_type.as_str().into(),
        })
    } else {
        return Err(RouteCompileError::Invalid {
            path: path.to_owned(),
            message: "a route needs an action".to_owned(),
        });
    };

    let rewrite = match &spec.rewrite {
        None => None,
        Some(rw) => Some(
            match (&rw.prefix, &rw.full_path, &spec.matcher.path_prefix) {
                (Some(replacement), None, Some(matched)) => PathRewrite::Prefix {
                    matched: normalize_prefix(matched).as_bytes().into(),
                    replacement: replacement.as_bytes().into(),
                },
                (None, Some(full), _) => PathRewrite::FullPath(full.as_bytes().into()),
                _ => {
                    return Err(RouteCompileError::Invalid {
                        path: format!("{path}.rewrite"),
                        message: "give prefix (with match.path_prefix) or full_path".to_owned(),
                    });
                }
            },
        ),
    };

    let mirror = match &spec.mirror {
        None => None,
        Some(m) => Some(Mirror {
            cluster: cluster_index(clusters, format!("{path}.mirror.cluster"), &m.cluster)?,
            share: Share::from_percent(m.percent),
        }),
    };

    let matcher = &spec.matcher;
    let headers = matcher
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_condition(&format!("{path}.match.headers[{i}]"), h, arena))
        .collect::<Result<_, _>>()?;
    let query = matcher
        .query
        .iter()
        .enumerate()
        .map(|(i, q)| query_condition(&format!("{path}.match.query[{i}]"), q, arena))
        .collect::<Result<_, _>>()?;
    let conditions = Conditions {
        methods: matcher
            .methods
            .iter()
            .map(|m| m.as_bytes().into())
            .collect(),
        headers,
        query,
        principals: matcher
            .source_principals
            .iter()
            .map(|p| PrincipalPattern::parse(p))
            .collect(),
    };

    let fault_headers = spec
        .fault
        .as_ref()
        .map(|f| {
            f.headers
                .iter()
                .enumerate()
                .map(|(i, h)| header_condition(&format!("{path}.fault.headers[{i}]"), h, arena))
                .collect::<Result<Box<[_]>, _>>()
        })
        .transpose()?;

    Ok(Route {
        name,
        id,
        action,
        rewrite,
        request_headers: header_mutation(&spec.request_headers),
        response_headers: header_mutation(&spec.response_headers),
        mirror,
        timeout: spec.timeout.filter(|t| !t.is_zero()).map(|t| t.get()),
        retries: spec.retries.as_ref().map(|r| RetryPolicy {
            attempts: r.attempts,
            per_try_timeout: r.per_try_timeout.filter(|t| !t.is_zero()).map(|t| t.get()),
            retry_on: RetryOnSet::new(&r.retry_on),
            retriable_status_codes: r.retriable_status_codes.clone().into(),
            backoff: r.backoff.get(),
            max_backoff: r
                .max_backoff
                .map_or(r.backoff.get().saturating_mul(10), |max| max.get()),
        }),
        fault: spec.fault.as_ref().map(|f| FaultPolicy {
            when: Conditions {
                methods: Box::default(),
                headers: fault_headers.unwrap_or_default(),
                query: Box::default(),
                principals: Box::default(),
            },
            delay: f
                .delay
                .as_ref()
                .map(|d| (Share::from_percent(d.percent), d.fixed.get())),
            abort: f.abort.as_ref().map(|a| FaultAbort {
                share: Share::from_percent(a.percent),
                status: a.status,
                grpc_status: a.grpc_status,
            }),
        }),
        rate_limit: spec.rate_limit.as_ref().map(rate_limit),
        max_request_body: spec.max_request_body.map(|b| b.bytes()),
        conditions,
    })
}

fn regex(arena: &mut RegexArena, path: String, pattern: &str) -> Result<u32, RouteCompileError> {
    arena
        .add(pattern)
        .map_err(|message| RouteCompileError::Regex { path, message })
}

fn header_condition(
    path: &str,
    spec: &HeaderMatchSpec,
    arena: &mut RegexArena,
) -> Result<HeaderCondition, RouteCompileError> {
    let test = match (&spec.exact, &spec.prefix, &spec.regex, spec.present) {
        (Some(v), None, None, None) => HeaderTest::Exact(v.as_bytes().into()),
        (None, Some(v), None, None) => HeaderTest::Prefix(v.as_bytes().into()),
        (None, None, Some(p), None) => HeaderTest::Regex(regex(arena, format!("{path}.regex"), p)?),
        (None, None, None, Some(true)) => HeaderTest::Present,
        (None, None, None, Some(false)) => HeaderTest::Absent,
        _ => {
            return Err(RouteCompileError::Invalid {
                path: path.to_owned(),
                message: "give exactly one of exact, prefix, regex and present".to_owned(),
            });
        }
    };
    Ok(HeaderCondition {
        name: spec.name.to_ascii_lowercase().into(),
        test,
    })
}

fn query_condition(
    path: &str,
    spec: &QueryMatchSpec,
    arena: &mut RegexArena,
) -> Result<QueryCondition, RouteCompileError> {
    let test = match (&spec.exact, &spec.regex, spec.present) {
        (Some(v), None, None) => QueryTest::Exact(v.as_bytes().into()),
        (None, Some(p), None) => QueryTest::Regex(regex(arena, format!("{path}.regex"), p)?),
        (None, None, Some(true)) => QueryTest::Present,
        (None, None, Some(false)) => QueryTest::Absent,
        _ => {
            return Err(RouteCompileError::Invalid {
                path: path.to_owned(),
                message: "give exactly one of exact, regex and present".to_owned(),
            });
        }
    };
    Ok(QueryCondition {
        name: spec.name.as_bytes().into(),
        test,
    })
}

fn header_mutation(spec: &HeaderMutationSpec) -> HeaderMutation {
    let pairs = |map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .map(|(n, v)| (n.to_ascii_lowercase().into(), Bytes::from(v.clone())))
            .collect()
    };
    HeaderMutation {
        remove: spec
            .remove
            .iter()
            .map(|n| n.to_ascii_lowercase().into())
            .collect(),
        set: pairs(&spec.set),
        add: pairs(&spec.add),
    }
}

/// A rate limit's parameters (also for listeners, compiled in `snapshot`).
pub fn rate_limit(spec: &RateLimitSpec) -> RateLimit {
    RateLimit {
        requests_per_second: spec.requests_per_second,
        burst: spec.burst.unwrap_or(spec.requests_per_second),
        key: match &spec.key {
            None => RateLimitKey::Global,
            Some(RateLimitKeySpec::ClientIp) => RateLimitKey::ClientIp,
            Some(RateLimitKeySpec::Header(name)) => {
                RateLimitKey::Header(name.to_ascii_lowercase().into())
            }
        },
    }
}
