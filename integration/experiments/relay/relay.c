// Experiment, not part of mqgate (BENCHMARKS.md, "Tried and dropped: in-kernel relaying" and "splice(2)"):
// a TCP relay on 127.0.0.1 whose data path is a BPF sockmap verdict program, to measure
// what relaying in the kernel would give and what it breaks. Built and driven by ./run-sockmap and ./run-splice.
//
//   relay LISTEN_PORT UPSTREAM_PORT [user|user16|splice|splice64k]
//
// Each accepted connection gets an upstream connection; both sockets go into a SOCKHASH
// keyed by socket cookie, whose value is the peer socket. The verdict program (11
// instructions, assembled below) redirects every received skb to the peer's send side:
// bpf_sk_redirect_hash(skb, map, &cookie(skb), 0). User space only sees hang-ups and
// passes a half-close on with shutdown(SHUT_WR), as a user-space proxy does.
// With "user" it is a plain epoll read/write relay instead (no BPF), for comparison
// ("user16": the same with a 16 KB buffer, the size of mqgate's reads);
// with "splice" the same relay moves bytes with splice(2) through one pipe (socket ->
// pipe -> socket, no copy to user space), for BENCHMARKS.md's "Tried and dropped: splice"
// (a 1 MB pipe; "splice64k": the default 64 KB pipe, as mqgate's pipes are).
// Needs root (CAP_BPF + CAP_NET_ADMIN).
#define _GNU_SOURCE
#include <linux/bpf.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <stdint.h>
#include <signal.h>
#include <fcntl.h>
#include <poll.h>

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

static int bpf(int cmd, union bpf_attr *a) { return syscall(__NR_bpf, cmd, a, sizeof(*a)); }

#define I(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})

static int map_fd, prog_fd;
static int use_sockmap = 1;
static int use_splice = 0;
static int pipefd[2];

static void die(const char *m) { perror(m); exit(1); }

static void setup_bpf(void) {
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_type = BPF_MAP_TYPE_SOCKHASH;
    a.key_size = 8;
    a.value_size = 8;
    a.max_entries = 65536;
    map_fd = bpf(BPF_MAP_CREATE, &a);
    if (map_fd < 0) die("map create");

    struct bpf_insn prog[] = {
        I(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),          // r6 = skb
        I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
        I(BPF_STX | BPF_MEM | BPF_DW, 10, 0, -8, 0),         // *(u64*)(fp-8) = cookie
        I(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0),          // r1 = skb
        I(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, map_fd),
        I(0, 0, 0, 0, 0),
        I(BPF_ALU64 | BPF_MOV | BPF_X, 3, 10, 0, 0),         // r3 = fp
        I(BPF_ALU64 | BPF_ADD | BPF_K, 3, 0, 0, -8),         // r3 -= 8
        I(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 0),          // flags 0 = egress
        I(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),
        I(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    static char log[65536];
    memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_SK_SKB;
    a.insns = (uint64_t)(uintptr_t)prog;
    a.insn_cnt = sizeof prog / sizeof prog[0];
    a.license = (uint64_t)(uintptr_t)"GPL";
    a.log_buf = (uint64_t)(uintptr_t)log;
    a.log_size = sizeof log;
    a.log_level = 1;
    prog_fd = bpf(BPF_PROG_LOAD, &a);
    if (prog_fd < 0) { fprintf(stderr, "verifier: %s\n", log); die("prog load"); }

    memset(&a, 0, sizeof a);
    a.target_fd = map_fd;
    a.attach_bpf_fd = prog_fd;
    a.attach_type = getenv("STREAM") ? BPF_SK_SKB_STREAM_VERDICT : BPF_SK_SKB_VERDICT;
    if (bpf(BPF_PROG_ATTACH, &a) < 0) die("attach");
}

static uint64_t cookie(int fd) {
    uint64_t c = 0;
    socklen_t l = sizeof c;
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &l) < 0) die("SO_COOKIE");
    return c;
}

static int map_put(uint64_t key, int fd) {
    union bpf_attr a;
    uint64_t v = fd;
    memset(&a, 0, sizeof a);
    a.map_fd = map_fd;
    a.key = (uint64_t)(uintptr_t)&key;
    a.value = (uint64_t)(uintptr_t)&v;
    a.flags = BPF_ANY;
    return bpf(BPF_MAP_UPDATE_ELEM, &a);
}

static void map_del(uint64_t key) {
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_fd = map_fd;
    a.key = (uint64_t)(uintptr_t)&key;
    bpf(BPF_MAP_DELETE_ELEM, &a);
}

#define MAXFD 70000
static int peer[MAXFD];
static uint64_t ck[MAXFD];
static int eof[MAXFD];
static int inmap[MAXFD];
static long fallbacks;
static char buf[65536];
static size_t bufsz = sizeof buf;

// The peer cannot take more now: wait until it can (the whole relay waits, as in a
// prototype; without burning CPU, so that CPU per MB compares the modes fairly).
static void wait_writable(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    poll(&p, 1, 1000);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    int lport = atoi(argv[1]), uport = atoi(argv[2]);
    if (argc > 3 && !strcmp(argv[3], "user")) use_sockmap = 0;
    if (argc > 3 && !strcmp(argv[3], "user16")) { use_sockmap = 0; bufsz = 16384; }
    if (argc > 3 && !strncmp(argv[3], "splice", 6)) {
        use_sockmap = 0;
        use_splice = 1;
        if (pipe2(pipefd, O_NONBLOCK) < 0) die("pipe2");
        if (strcmp(argv[3], "splice64k")) fcntl(pipefd[1], F_SETPIPE_SZ, 1 << 20);
    }
    if (use_sockmap) setup_bpf();
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons(lport), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (void *)&la, sizeof la) < 0) die("bind");
    if (listen(ls, 4096) < 0) die("listen");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break;
                    int u = socket(AF_INET, SOCK_STREAM, 0);
                    struct sockaddr_in ua = {.sin_family = AF_INET, .sin_port = htons(uport), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
                    if (connect(u, (void *)&ua, sizeof ua) < 0) { close(c); close(u); continue; }
                    int fl = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &fl, sizeof fl);
                    setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &fl, sizeof fl);
                    ioctl(u, FIONBIO, &fl);
                    peer[c] = u; peer[u] = c; eof[c] = eof[u] = 0;
                    if (use_sockmap) {
                        ck[c] = cookie(c); ck[u] = cookie(u);
                        inmap[c] = inmap[u] = 0;
                        if (map_put(ck[c], u) == 0) {
                            if (map_put(ck[u], c) == 0) inmap[c] = inmap[u] = 1;
                            else map_del(ck[c]);
                        }
                        if (!inmap[c]) fprintf(stderr, "fallback %ld: %s\n", ++fallbacks, strerror(errno));
                    }
                    uint32_t evm = (use_sockmap && inmap[c]) ? EPOLLRDHUP : (EPOLLIN | EPOLLRDHUP);
                    struct epoll_event e1 = {.events = evm, .data.fd = c};
                    struct epoll_event e2 = {.events = evm, .data.fd = u};
                    if (use_sockmap && inmap[c]) {  // bytes that arrived before the insert
                        ssize_t r = recv(c, buf, sizeof buf, MSG_DONTWAIT);
                        if (r > 0) { write(u, buf, r); fprintf(stderr, "pre-insert %zd\n", r); }
                    }
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e1);
                    epoll_ctl(ep, EPOLL_CTL_ADD, u, &e2);
                }
                continue;
            }
            int p = peer[fd];
            if (use_splice) {
                ssize_t r = splice(fd, NULL, pipefd[1], NULL, 65536, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
                if (r > 0) {
                    ssize_t off = 0;
                    while (off < r) {  // drain the pipe into the peer (wait when it is full)
                        ssize_t w = splice(pipefd[0], NULL, p, NULL, r - off, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
                        if (w > 0) off += w; else if (errno == EAGAIN) wait_writable(p); else break;
                    }
                    // the peer failed: empty the pipe, or its bytes go to the next connection
                    while (off < r) {
                        ssize_t d = read(pipefd[0], buf, r - off < (ssize_t)sizeof buf ? r - off : (ssize_t)sizeof buf);
                        if (d <= 0) break;
                        off += d;
                    }
                    continue;
                }
                if (r < 0 && errno == EAGAIN) continue;
            } else if (!use_sockmap || !inmap[fd]) {
                ssize_t r = read(fd, buf, bufsz);
                if (r > 0) {
                    ssize_t off = 0;
                    while (off < r) {  // wait when the peer is full (prototype)
                        ssize_t w = write(p, buf + off, r - off);
                        if (w > 0) off += w; else if (errno == EAGAIN) wait_writable(p); else break;
                    }
                    continue;
                }
                if (r < 0 && errno == EAGAIN) continue;
            } else {
                // In sockmap mode data never reaches user space; we only see hangups.
                int avail = 0;
                ioctl(fd, FIONREAD, &avail);
                ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
                if (r > 0) { fprintf(stderr, "user space got %zd bytes (avail %d)\n", r, avail); write(p, buf, r); continue; }
                if (r < 0 && errno == EAGAIN) continue;
            }
            // EOF or error on fd: pass the half-close on, close when both sides done.
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            eof[fd] = 1;
            shutdown(p, SHUT_WR);
            if (eof[p]) {
                if (use_sockmap && inmap[fd]) { map_del(ck[fd]); map_del(ck[p]); }
                close(fd); close(p);
            }
        }
    }
}
