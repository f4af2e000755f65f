// Keeps the plugin loadable on glibc 2.28 (manylinux_2_28) when it is built on a newer glibc.
//
// glibc 2.34 moved libpthread/libdl/librt into libc.so.6 and gave the moved functions a new default
// symbol version (GLIBC_2.34), keeping the old version as a compatibility alias. A library linked on
// such a host binds to the new version, also for the calls inside the static libstdc++ and cudart we
// link, and then fails to load on an older glibc. Each function below gets a local (hidden) definition
// that jumps to the old version of the same function, so every call in the library binds to the old
// one; on the build host that is the same code. Where the old version lives in libpthread.so.0,
// libdl.so.2 or librt.so.1 (glibc < 2.34), those libraries are NEEDED (see CMakeLists.txt).
//
// __libc_single_threaded (glibc 2.32) is a variable libstdc++'s headers read to skip atomic reference
// counts in single-threaded processes; our own copy says "not single-threaded", which is always
// correct. arc4random (glibc 2.36) is referenced by the static libstdc++'s std::random_device, which
// its copy-on-write string instantiations pull into every link: a local definition on getrandom
// (glibc 2.25) stands in for it. _dl_find_object (glibc 2.35) comes from a static libgcc's unwinder: the plugin links
// libgcc_s.so.1 instead. tests/test_packaging.py checks that no symbol version above GLIBC_2.28 remains.
#include <features.h>

#if defined(__GLIBC__) && __GLIBC__ == 2 && __GLIBC_MINOR__ >= 36
#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>

extern "C" __attribute__((visibility("hidden"))) uint32_t arc4random(void) {
  uint32_t value = 0;
  ssize_t got;
  do {
    got = getrandom(&value, sizeof(value), 0);
  } while (got < 0 && errno == EINTR);
  if (got == static_cast<ssize_t>(sizeof(value))) return value;
  // Kernels before 3.17 have no getrandom: the device it reads.
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    got = read(fd, &value, sizeof(value));
    close(fd);
    if (got == static_cast<ssize_t>(sizeof(value))) return value;
  }
  std::abort();  // as glibc's arc4random does when no entropy can be had
}
#endif

#if defined(__GLIBC__) && defined(__x86_64__)

#define C2ORT_OLD_VERSION(sym, ver)                                         \
  __asm__(".pushsection .text\n"                                            \
          ".globl " #sym "\n.hidden " #sym "\n.type " #sym ",@function\n"   \
          #sym ":\n\tjmp c2ort_glibc_old_" #sym "@PLT\n"                    \
          ".size " #sym ", .-" #sym "\n"                                     \
          ".symver c2ort_glibc_old_" #sym "," #sym "@" #ver "\n"            \
          ".popsection\n");

#if __GLIBC__ == 2 && __GLIBC_MINOR__ >= 32
extern "C" {
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
}
#endif

#if __GLIBC__ == 2 && __GLIBC_MINOR__ >= 34
// Used by the static libstdc++ (std::call_once, thread-local keys) and register_custom_ops.cc.
C2ORT_OLD_VERSION(dlclose, GLIBC_2.2.5)
C2ORT_OLD_VERSION(dlopen, GLIBC_2.2.5)
C2ORT_OLD_VERSION(dlsym, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_once, GLIBC_2.2.5)
C2ORT_OLD_VERSION(__pthread_key_create, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_key_create, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_key_delete, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_getspecific, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_setspecific, GLIBC_2.2.5)
#if defined(CAFFE2_ORT_WITH_CUDA)
// Used by the static CUDA runtime (libcudart_static.a).
C2ORT_OLD_VERSION(dlerror, GLIBC_2.2.5)
C2ORT_OLD_VERSION(dlmopen, GLIBC_2.3.4)
C2ORT_OLD_VERSION(dlvsym, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_condattr_setpshared, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_create, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_detach, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_join, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_kill, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_mutex_trylock, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_mutexattr_destroy, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_mutexattr_init, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_mutexattr_setpshared, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_mutexattr_settype, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_rwlock_destroy, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_rwlock_init, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_rwlock_rdlock, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_rwlock_timedrdlock, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_rwlock_timedwrlock, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_rwlock_tryrdlock, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_rwlock_trywrlock, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_rwlock_unlock, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_rwlock_wrlock, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_rwlockattr_destroy, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_rwlockattr_init, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_rwlockattr_setpshared, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_spin_destroy, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_spin_init, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_spin_lock, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_spin_trylock, GLIBC_2.2.5)
C2ORT_OLD_VERSION(pthread_spin_unlock, GLIBC_2.2.5)
C2ORT_OLD_VERSION(sem_destroy, GLIBC_2.2.5)
C2ORT_OLD_VERSION(sem_init, GLIBC_2.2.5)
C2ORT_OLD_VERSION(sem_post, GLIBC_2.2.5)
C2ORT_OLD_VERSION(sem_timedwait, GLIBC_2.2.5)
C2ORT_OLD_VERSION(sem_trywait, GLIBC_2.2.5)
C2ORT_OLD_VERSION(sem_wait, GLIBC_2.2.5)
C2ORT_OLD_VERSION(shm_open, GLIBC_2.2.5)
C2ORT_OLD_VERSION(shm_unlink, GLIBC_2.2.5)
#endif  // CAFFE2_ORT_WITH_CUDA
#endif  // glibc >= 2.34

#endif  // __GLIBC__ && __x86_64__
