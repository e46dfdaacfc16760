/* mpi_allreduce ITERS PROGRESS: an MPI job for tests/mpi.rs (issue 10).
 *
 * Each of the ranks does ITERS rounds of two MPI_Allreduce calls: one long
 * (the rank's (rank+1)*(i+1)), and one of 8192 doubles (64 KiB, large enough
 * for the shared-memory transports to take their single-copy or fragment
 * paths), checked element by element against the sum every rank can compute.
 * Rank 0 folds every round's sum into an order-sensitive hash and writes one
 * fixed-width line per round ("%06d %020llu") at its own offset of PROGRESS,
 * which it keeps open: a run restored from a checkpoint taken at round k
 * writes rounds k.. again over what the killed run wrote after it, so the file
 * ends the same as an uninterrupted run's. At the end rank 0 writes and prints
 * "result HASH". Any wrong element prints "FAIL ..." and aborts the job.
 * Between rounds every rank sleeps 40 ms, so a test can checkpoint mid-run. */
#include <mpi.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N 8192

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc != 3) {
        if (rank == 0)
            fprintf(stderr, "usage: mpi_allreduce ITERS PROGRESS\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    int iters = atoi(argv[1]);
    int fd = -1;
    if (rank == 0) {
        fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
            perror("open progress");
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    static double in[N], out[N];
    unsigned long long hash = 1469598103934665603ULL;
    for (int i = 0; i < iters; i++) {
        long v = (long)(rank + 1) * (i + 1), s = 0;
        MPI_Allreduce(&v, &s, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
        long want = (long)size * (size + 1) / 2 * (i + 1);
        if (s != want) {
            fprintf(stderr, "FAIL rank %d round %d: sum %ld, want %ld\n", rank, i, s, want);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        for (int k = 0; k < N; k++)
            in[k] = (double)(rank + 1) * (double)((i + k) % 97);
        MPI_Allreduce(in, out, N, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        for (int k = 0; k < N; k++) {
            double w = (double)size * (size + 1) / 2 * (double)((i + k) % 97);
            if (out[k] != w) {
                fprintf(stderr, "FAIL rank %d round %d element %d: %g, want %g\n", rank, i, k,
                        out[k], w);
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
        }
        hash = (hash ^ (unsigned long long)s) * 1099511628211ULL;
        if (rank == 0) {
            char line[64];
            int n = snprintf(line, sizeof line, "%06d %020llu\n", i, hash);
            if (write(fd, line, n) != n) {
                perror("write progress");
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
        }
        usleep(40000);
    }
    if (rank == 0) {
        char line[64];
        int n = snprintf(line, sizeof line, "result %llu\n", hash);
        if (write(fd, line, n) != n)
            perror("write progress");
        close(fd);
        printf("result %llu\n", hash);
        fflush(stdout);
    }
    MPI_Finalize();
    return 0;
}
