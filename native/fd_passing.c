// Unix-socket primitives Node does not expose, for the TPM proxy (src/monitor/vtpm): socketpair, a listening
// unix socket with accept, sendmsg/recvmsg carrying file descriptors (SCM_RIGHTS), and readability
// notification on the event loop through uv_poll_t so nothing ever blocks the loop.
//
// Every descriptor made here is non-blocking and close-on-exec; recvMsg returns null instead of blocking.
// Arguments come from JavaScript and are checked; a bad one throws, never aborts the process.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

// The control channel carries at most one fd per message (CMD_SET_DATAFD); a few more are accepted and closed.
#define MAX_FDS 4
#define MAX_RECV 65536

#define CHECK(env, call)                                                  \
  do {                                                                    \
    if ((call) != napi_ok) {                                              \
      napi_throw_error((env), NULL, "fd_passing: N-API call failed");     \
      return NULL;                                                        \
    }                                                                     \
  } while (0)

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_value code, text, error;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text) == napi_ok &&
      napi_create_int32(env, err, &code) == napi_ok && napi_create_error(env, NULL, text, &error) == napi_ok) {
    napi_set_named_property(env, error, "errno", code);
    napi_throw(env, error);
  }
  return NULL;
}

static int get_fd(napi_env env, napi_value v, int32_t *fd) {
  if (napi_get_value_int32(env, v, fd) != napi_ok || *fd < 0) {
    napi_throw_type_error(env, NULL, "fd_passing: expected a file descriptor (non-negative integer)");
    return -1;
  }
  return 0;
}

static napi_value int_value(napi_env env, int32_t n) {
  napi_value v;
  return napi_create_int32(env, n, &v) == napi_ok ? v : NULL;
}

// socketpair(): [fd, fd], AF_UNIX stream, both ends non-blocking and close-on-exec.
static napi_value js_socketpair(napi_env env, napi_callback_info info) {
  (void)info;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) return throw_errno(env, "socketpair", errno);
  napi_value arr;
  CHECK(env, napi_create_array_with_length(env, 2, &arr));
  CHECK(env, napi_set_element(env, arr, 0, int_value(env, sv[0])));
  CHECK(env, napi_set_element(env, arr, 1, int_value(env, sv[1])));
  return arr;
}

// listenUnix(path): a listening unix stream socket bound at path (the caller owns the directory and the mode).
static napi_value js_listen_unix(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  size_t len = 0;
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], addr.sun_path, sizeof addr.sun_path, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "listenUnix: expected a path");
    return NULL;
  }
  if (len == 0 || len >= sizeof addr.sun_path - 1) {
    napi_throw_range_error(env, NULL, "listenUnix: path is empty or too long for a unix socket");
    return NULL;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 4) != 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, "listenUnix", err);
  }
  return int_value(env, fd);
}

// connectUnix(path): a connected unix stream socket (non-blocking, close-on-exec) to a listening socket.
static napi_value js_connect_unix(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  size_t len = 0;
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], addr.sun_path, sizeof addr.sun_path, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "connectUnix: expected a path");
    return NULL;
  }
  if (len == 0 || len >= sizeof addr.sun_path - 1) {
    napi_throw_range_error(env, NULL, "connectUnix: path is empty or too long for a unix socket");
    return NULL;
  }
  // Connected while blocking (a local connect does not wait on anything), then made non-blocking.
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, "connectUnix", err);
  }
  return int_value(env, fd);
}

// accept(fd): the accepted connection (non-blocking, close-on-exec), or -1 when none is pending.
static napi_value js_accept(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || get_fd(env, argv[0], &fd) != 0) return NULL;
  int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (c < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) return int_value(env, -1);
    return throw_errno(env, "accept", errno);
  }
  return int_value(env, c);
}

// sendMsg(fd, data, fds[]): bytes written (0 when the socket would block), with fds attached as SCM_RIGHTS.
static napi_value js_send_msg(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3 || get_fd(env, argv[0], &fd) != 0) return NULL;
  void *data = NULL;
  size_t length = 0;
  bool is_typed = false;
  CHECK(env, napi_is_typedarray(env, argv[1], &is_typed));
  if (!is_typed) {
    napi_throw_type_error(env, NULL, "sendMsg: data must be a Uint8Array");
    return NULL;
  }
  napi_typedarray_type type;
  CHECK(env, napi_get_typedarray_info(env, argv[1], &type, &length, &data, NULL, NULL));
  if (type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "sendMsg: data must be a Uint8Array");
    return NULL;
  }
  uint32_t nfds = 0;
  bool is_array = false;
  CHECK(env, napi_is_array(env, argv[2], &is_array));
  if (!is_array || napi_get_array_length(env, argv[2], &nfds) != napi_ok || nfds > MAX_FDS) {
    napi_throw_range_error(env, NULL, "sendMsg: fds must be an array of at most 4 descriptors");
    return NULL;
  }
  if (length == 0 && nfds > 0) {
    napi_throw_range_error(env, NULL, "sendMsg: descriptors need at least one data byte");
    return NULL;
  }
  int fds[MAX_FDS];
  for (uint32_t i = 0; i < nfds; i++) {
    napi_value v;
    CHECK(env, napi_get_element(env, argv[2], i, &v));
    if (get_fd(env, v, &fds[i]) != 0) return NULL;
  }
  struct iovec iov = {.iov_base = data, .iov_len = length};
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof control);
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return int_value(env, 0);
    return throw_errno(env, "sendmsg", errno);
  }
  return int_value(env, (int32_t)n);
}

// recvMsg(fd, max): null when nothing is ready, else { data: Buffer (empty at end of stream), fds: number[] }.
// Received descriptors are close-on-exec; the caller owns them.
static napi_value js_recv_msg(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd, max;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || get_fd(env, argv[0], &fd) != 0) return NULL;
  if (napi_get_value_int32(env, argv[1], &max) != napi_ok || max < 1 || max > MAX_RECV) {
    napi_throw_range_error(env, NULL, "recvMsg: max must be 1..65536");
    return NULL;
  }
  uint8_t buf[MAX_RECV];
  struct iovec iov = {.iov_base = buf, .iov_len = (size_t)max};
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
  } control;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      napi_value nul;
      CHECK(env, napi_get_null(env, &nul));
      return nul;
    }
    return throw_errno(env, "recvmsg", errno);
  }
  napi_value out, data, fds;
  CHECK(env, napi_create_object(env, &out));
  void *copy;
  CHECK(env, napi_create_buffer_copy(env, (size_t)n, buf, &copy, &data));
  CHECK(env, napi_create_array(env, &fds));
  uint32_t count = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; i++) {
      int got;
      memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      CHECK(env, napi_set_element(env, fds, count++, int_value(env, got)));
    }
  }
  // A truncated control message means descriptors were dropped by the kernel: say so rather than lose them silently.
  napi_value truncated;
  CHECK(env, napi_get_boolean(env, (msg.msg_flags & MSG_CTRUNC) != 0, &truncated));
  CHECK(env, napi_set_named_property(env, out, "data", data));
  CHECK(env, napi_set_named_property(env, out, "fds", fds));
  CHECK(env, napi_set_named_property(env, out, "truncated", truncated));
  return out;
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || get_fd(env, argv[0], &fd) != 0) return NULL;
  if (close(fd) != 0 && errno != EINTR) return throw_errno(env, "close", errno);
  return NULL;
}

// A watch: uv_poll_t on one fd, calling back into JavaScript each time the fd is readable (or hung up).
// Two owners share it, the JavaScript wrapper and the libuv handle; it is freed when both have let go, so
// neither a stop() from inside the callback nor a garbage-collected wrapper leaves libuv with freed memory.
typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  int stopped;
  int owners;
} watch_t;

static void watch_release(watch_t *w) {
  if (--w->owners == 0) free(w);
}

static void watch_closed(uv_handle_t *h) {
  watch_t *w = h->data;
  // Released here, a loop turn after stop(), never while the callback that may have called stop() runs.
  if (w->callback != NULL) napi_delete_reference(w->env, w->callback);
  if (w->context != NULL) napi_async_destroy(w->env, w->context);
  watch_release(w);
}

static void watch_stop(watch_t *w) {
  if (w->stopped) return;
  w->stopped = 1;
  uv_poll_stop(&w->poll);
  uv_close((uv_handle_t *)&w->poll, watch_closed);
}

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)events;
  watch_t *w = h->data;
  if (w->stopped) return;
  napi_handle_scope scope;
  if (napi_open_handle_scope(w->env, &scope) != napi_ok) return;
  napi_value cb, recv, arg, result;
  if (napi_get_reference_value(w->env, w->callback, &cb) == napi_ok && napi_get_global(w->env, &recv) == napi_ok &&
      napi_create_int32(w->env, status, &arg) == napi_ok) {
    // make_callback runs the microtask queue afterwards, as any libuv-driven JavaScript callback does.
    if (napi_make_callback(w->env, w->context, recv, cb, 1, &arg, &result) == napi_pending_exception) {
      napi_value err;
      if (napi_get_and_clear_last_exception(w->env, &err) == napi_ok) napi_fatal_exception(w->env, err);
    }
  }
  napi_close_handle_scope(w->env, scope);
}

static void watch_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  watch_t *w = data;
  watch_stop(w);
  watch_release(w);
}

static napi_value js_watch_stop(napi_env env, napi_callback_info info) {
  napi_value self;
  void *data;
  CHECK(env, napi_get_cb_info(env, info, NULL, NULL, &self, &data));
  watch_t *w;
  if (napi_unwrap(env, self, (void **)&w) == napi_ok && w != NULL) watch_stop(w);
  return NULL;
}

// watchReadable(fd, callback(status)): { stop() }. status < 0 is a libuv error (the fd is then unusable).
static napi_value js_watch_readable(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || get_fd(env, argv[0], &fd) != 0) return NULL;
  napi_valuetype t;
  CHECK(env, napi_typeof(env, argv[1], &t));
  if (t != napi_function) {
    napi_throw_type_error(env, NULL, "watchReadable: callback must be a function");
    return NULL;
  }
  uv_loop_t *loop;
  CHECK(env, napi_get_uv_event_loop(env, &loop));
  watch_t *w = calloc(1, sizeof *w);
  if (w == NULL) return throw_errno(env, "watchReadable", ENOMEM);
  w->env = env;
  w->poll.data = w;
  int rc = uv_poll_init(loop, &w->poll, fd);
  if (rc != 0) {
    free(w);
    return throw_errno(env, "uv_poll_init", -rc);
  }
  napi_value handle, name, stop;
  w->owners = 1;
  if (napi_create_object(env, &handle) != napi_ok || napi_create_reference(env, argv[1], 1, &w->callback) != napi_ok ||
      napi_create_string_utf8(env, "fd_passing.watch", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, handle, name, &w->context) != napi_ok) {
    w->stopped = 1;
    uv_close((uv_handle_t *)&w->poll, watch_closed);
    napi_throw_error(env, NULL, "watchReadable: N-API call failed");
    return NULL;
  }
  rc = uv_poll_start(&w->poll, UV_READABLE | UV_DISCONNECT, on_readable);
  if (rc != 0) {
    watch_stop(w);
    return throw_errno(env, "uv_poll_start", -rc);
  }
  if (napi_wrap(env, handle, w, watch_finalize, NULL, NULL) != napi_ok) {
    watch_stop(w);
    napi_throw_error(env, NULL, "watchReadable: N-API call failed");
    return NULL;
  }
  w->owners = 2;
  CHECK(env, napi_create_function(env, "stop", NAPI_AUTO_LENGTH, js_watch_stop, NULL, &stop));
  CHECK(env, napi_set_named_property(env, handle, "stop", stop));
  return handle;
}

NAPI_MODULE_INIT() {
  const napi_property_descriptor props[] = {
      {"socketpair", NULL, js_socketpair, NULL, NULL, NULL, napi_default, NULL},
      {"listenUnix", NULL, js_listen_unix, NULL, NULL, NULL, napi_default, NULL},
      {"connectUnix", NULL, js_connect_unix, NULL, NULL, NULL, napi_default, NULL},
      {"accept", NULL, js_accept, NULL, NULL, NULL, napi_default, NULL},
      {"sendMsg", NULL, js_send_msg, NULL, NULL, NULL, napi_default, NULL},
      {"recvMsg", NULL, js_recv_msg, NULL, NULL, NULL, napi_default, NULL},
      {"close", NULL, js_close, NULL, NULL, NULL, napi_default, NULL},
      {"watchReadable", NULL, js_watch_readable, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
