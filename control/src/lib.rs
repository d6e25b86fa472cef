//! ringmesh control plane (filled in below).
