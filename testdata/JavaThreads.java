// JavaThreads OUTFILE STOPFILE [WORKERS]
//
// A JVM with several threads of its own (WORKERS workers, default 4, besides
// the JVM's GC and compiler threads).  Each worker loops: allocates some
// garbage (so the GC runs), then increments its own counter and a shared one
// under one lock, and sleeps 2 ms.  The main thread appends "tick <n>" to
// OUTFILE (opened once in append mode) every 50 ms and prints "<n>" on stdout,
// "ready" after the third tick, until STOPFILE exists; then it stops the
// workers and checks that the counters add up.
// Verdict: "java ok ticks=<n> shared=<n>" and exit 0, or "FAIL: ..." and exit 1.
import java.io.FileOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.concurrent.atomic.AtomicBoolean;

public class JavaThreads {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: JavaThreads OUTFILE STOPFILE [WORKERS]");
            System.exit(2);
        }
        Path stop = Paths.get(args[1]);
        int nworkers = args.length > 2 ? Integer.parseInt(args[2]) : 4;
        Object lock = new Object();
        long[] perThread = new long[nworkers];
        long[] shared = {0};
        AtomicBoolean stopping = new AtomicBoolean(false);

        Thread[] workers = new Thread[nworkers];
        for (int i = 0; i < nworkers; i++) {
            final int id = i;
            workers[i] = new Thread(() -> {
                long checksum = 0;
                while (!stopping.get()) {
                    byte[] garbage = new byte[16 * 1024];
                    garbage[(int) (checksum & 0x3fff)] = (byte) id;
                    checksum += garbage.length + garbage[(int) (checksum & 0x3fff)];
                    synchronized (lock) {
                        shared[0]++;
                        perThread[id]++;
                    }
                    try {
                        Thread.sleep(2);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        return;
                    }
                }
            }, "worker-" + i);
            workers[i].start();
        }

        long ticks = 0;
        try (FileOutputStream out = new FileOutputStream(args[0], true)) {
            while (!Files.exists(stop)) {
                ticks++;
                out.write(("tick " + ticks + "\n").getBytes(StandardCharsets.UTF_8));
                out.flush();
                System.out.println(ticks);
                if (ticks == 3) {
                    System.out.println("ready");
                }
                System.out.flush();
                Thread.sleep(50);
            }
        }
        stopping.set(true);
        for (Thread w : workers) {
            w.join();
        }
        long sum = 0;
        for (int i = 0; i < nworkers; i++) {
            if (perThread[i] == 0) {
                System.out.println("FAIL: worker " + i + " never ran");
                System.exit(1);
            }
            sum += perThread[i];
        }
        if (sum != shared[0]) {
            System.out.println("FAIL: workers counted " + sum + ", shared counter " + shared[0]);
            System.exit(1);
        }
        System.out.println("java ok ticks=" + ticks + " shared=" + shared[0]);
    }
}
