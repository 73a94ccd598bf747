/* Memory read bandwidth for the decode bound in docs/benchmarks.md (STREAM-like read).
 *
 *   gcc -O3 -march=native -fopenmp tests/reference/bench_bandwidth.c -o /tmp/bandwidth
 *   OMP_NUM_THREADS=2 /tmp/bandwidth [GiB]
 *
 * Each thread sums its half of a buffer far larger than the caches with 8 independent vector
 * accumulators; prints one JSON line with the median read rate of 7 passes, on ordinary 4 KiB
 * pages and on transparent huge pages (madvise), since weights may sit on either.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double rate(size_t n, int huge) {
    float *buf = mmap(NULL, n * sizeof(float), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    madvise(buf, n * sizeof(float), huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
    double times[7], sink = 0;
    for (int r = 0; r < 7; r++) {
        double t = now(), total = 0;
#pragma omp parallel for reduction(+ : total)
        for (size_t c = 0; c < n; c += 4096) {
            float acc[8][16] = {{0}};
            for (size_t i = c; i < c + 4096; i += 128)
                for (int a = 0; a < 8; a++)
                    for (int l = 0; l < 16; l++) acc[a][l] += buf[i + a * 16 + l];
            for (int a = 0; a < 8; a++)
                for (int l = 0; l < 16; l++) total += acc[a][l];
        }
        times[r] = now() - t;
        sink += total;
    }
    qsort(times, 7, sizeof(double), cmp);
    munmap(buf, n * sizeof(float));
    if (sink < 0) printf("%f\n", sink);
    return n * sizeof(float) / times[3] / 1e9;
}

int main(int argc, char **argv) {
    double gib = argc > 1 ? atof(argv[1]) : 2.0;
    size_t n = (size_t)(gib * (1 << 30)) / sizeof(float) / 4096 * 4096;
    double small = rate(n, 0), huge = rate(n, 1);
    printf("{\"threads\": %d, \"gib\": %.1f, \"read_gb_s_4k\": %.2f, \"read_gb_s_thp\": %.2f}\n",
           omp_get_max_threads(), gib, small, huge);
    return 0;
}
