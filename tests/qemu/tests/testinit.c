/* A tiny PID 1 for cairn-qemu's own tests: prints cairn-style event lines on
 * ttyS0, turns ctrl-alt-del into a reboot and "poweroff" typed on the console
 * into a power-off. Built with `gcc -static` by tests/boot.rs. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t got_int;
static void on_int(int sig) { (void)sig; got_int = 1; }

int main(void) {
    mkdir("/dev", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    int fd = open("/dev/ttyS0", O_RDWR | O_NOCTTY);
    if (fd >= 0) { dup2(fd, 0); dup2(fd, 1); dup2(fd, 2); }
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *mode = getenv("testmode");
    printf("[    0.000] \033[32m INFO\033[0m cairn_init: test init up \033[3mevent\033[0m\033[2m=\033[0mready "
           "mode=%s msg=\"hello \\\"world\\\"\" pid=%d\r\n", mode ? mode : "none", (int)getpid());
    if (mode && strcmp(mode, "poweroff") == 0) {
        printf("[    0.001]  INFO cairn_init: powering off event=poweroff\r\n");
        sync();
        reboot(RB_POWER_OFF);
    }
    reboot(RB_DISABLE_CAD); /* ctrl-alt-del now sends SIGINT to init */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_int; /* no SA_RESTART: read() returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    char buf[256];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf - 1);
        if (got_int) {
            printf("[    9.000]  INFO cairn_init: ctrl-alt-del event=cad\r\n");
            sync();
            reboot(RB_AUTOBOOT);
        }
        if (n > 0) {
            buf[n] = 0;
            if (strstr(buf, "poweroff")) {
                printf("[    9.000]  INFO cairn_init: powering off event=poweroff\r\n");
                sync();
                reboot(RB_POWER_OFF);
            }
        } else if (n == 0 || (n < 0 && errno != EINTR)) {
            pause();
        }
    }
}
