#!/usr/bin/perl
# loop.pl OUTFILE STOPFILE [DELAY_SECONDS]
# A plain perl loop: appends "<n> <$$> <getpid>" to OUTFILE (opened once in
# append mode) every DELAY seconds (default 0.05, slept with select), until
# STOPFILE exists.  $$ is perl's copy of the PID taken at start; getpid is the
# raw system call now, so a restore under another PID shows as a mismatch.
# Prints "ready" after the third line, "done <n>" at the end.
use strict;
use warnings;
use IO::Handle;

my ($out, $stop, $delay) = @ARGV;
die "usage: $0 OUTFILE STOPFILE [DELAY]\n" unless defined $stop;
$delay //= 0.05;
open(my $fh, '>>', $out) or die "open $out: $!\n";
$fh->autoflush(1);
STDOUT->autoflush(1);
my $n = 0;
until (-e $stop) {
    $n++;
    my $pid = syscall(39);    # SYS_getpid on x86-64
    print $fh "$n $$ $pid\n" or die "write: $!\n";
    print "ready\n" if $n == 3;
    select(undef, undef, undef, $delay);
}
print "done $n\n";
