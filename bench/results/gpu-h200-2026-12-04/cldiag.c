#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
static void list(const char *who)
{
    cl_uint np = 0;
    cl_int e = clGetPlatformIDs(0, NULL, &np);
    printf("[%s pid %d] OCL_ICD_VENDORS=%s clGetPlatformIDs=%d np=%u\n", who, (int)getpid(),
           getenv("OCL_ICD_VENDORS") ? getenv("OCL_ICD_VENDORS") : "(unset)", e, np);
    if (e || !np) return;
    cl_platform_id p[8];
    clGetPlatformIDs(np > 8 ? 8 : np, p, NULL);
    for (cl_uint i = 0; i < np && i < 8; i++) {
        char name[128] = "";
        clGetPlatformInfo(p[i], CL_PLATFORM_NAME, sizeof name, name, NULL);
        cl_uint nd = 0;
        cl_int de = clGetDeviceIDs(p[i], CL_DEVICE_TYPE_ALL, 0, NULL, &nd);
        printf("[%s]   platform %u '%s': clGetDeviceIDs=%d nd=%u\n", who, i, name, de, nd);
    }
    fflush(stdout);
}
static cl_context gpu_context(void)
{
    cl_platform_id p[8]; cl_uint np = 0;
    clGetPlatformIDs(8, p, &np);
    for (cl_uint i = 0; i < np; i++) {
        cl_device_id d; cl_uint nd = 0;
        if (clGetDeviceIDs(p[i], CL_DEVICE_TYPE_GPU, 1, &d, &nd) == CL_SUCCESS && nd) {
            cl_int e; cl_context c = clCreateContext(NULL, 1, &d, NULL, NULL, &e);
            printf("[parent] GPU context: %d\n", e); fflush(stdout);
            return c;
        }
    }
    return NULL;
}
static void spawn(const char *how, int closefds)
{
    printf("--- child %s%s\n", how, closefds ? " (fds closed)" : ""); fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (closefds) for (int f = 3; f < 4096; f++) close(f);
        if (!strcmp(how, "exec")) execl("/proc/self/exe", "cldiag", "child", (char *)NULL);
        else {
            char self[4096]; ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
            self[n > 0 ? n : 0] = 0;
            execl("/bin/sh", "sh", "-c", "\"$0\" child", self, (char *)NULL);
        }
        _exit(127);
    }
    int st; waitpid(pid, &st, 0);
}
int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "child")) { list("child"); return 0; }
    if (argc > 1 && !strcmp(argv[1], "forkonly")) { /* child without exec */
        list("parent");
        pid_t pid = fork();
        if (pid == 0) { list("fork-no-exec"); _exit(0); }
        int st; waitpid(pid, &st, 0); return 0;
    }
    spawn("exec", 0);            /* before the parent touches OpenCL */
    list("parent");
    spawn("exec", 0);            /* after the platforms are listed */
    cl_context c = gpu_context();
    spawn("exec", 0);            /* with a GPU context alive */
    spawn("exec", 1);
    spawn("sh", 0);
    if (c) clReleaseContext(c);
    spawn("exec", 0);            /* after the context is released */
    return 0;
}
