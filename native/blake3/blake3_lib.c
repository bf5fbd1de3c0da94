// The official BLAKE3 C implementation (portable code and CPU dispatch), compiled from the copy Debian installs
// with librust-blake3-dev; binding.gyp puts its directory on the include path. Included rather than listed in
// binding.gyp because gyp's make generator cannot place objects for sources outside the repository.
#include <blake3.c>
#include <blake3_dispatch.c>
#include <blake3_portable.c>
