//! autokey worker (in progress).
