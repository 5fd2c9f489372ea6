fn sz<F, A, B, C, D, E, Fut>(_: F) -> usize where F: FnOnce(A, B, C, D, E) -> Fut { std::mem::size_of::<Fut>() }
#[test]
fn sizes() {
    eprintln!("handle future = {}", sz(mqgate::conn::handle));
}
