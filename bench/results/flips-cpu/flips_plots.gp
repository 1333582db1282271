# Plots of margingate flips' CSV files: gnuplot flips_plots.gp
N = 10826
F = 23
set terminal pngcairo size 900,500
set datafile separator ','
set output 'flips_margins.png'
set title 'Top-1/top-2 margin of the batched run: all synchronous steps vs flips'
set xlabel 'log10(margin + 1e-4)'
set ylabel 'fraction of steps'
set style fill transparent solid 0.5
bw = 0.1
bin(x) = bw * floor(x / bw)
plot 'flips_steps.csv' every ::1 using (bin(log10($8 + 1e-4))):(1.0 / N) smooth frequency with boxes title 'all steps', \
     '' every ::1 using (bin(log10($8 + 1e-4))):($9 == 1 ? 1.0 / F : 0) smooth frequency with boxes title 'flips'
set output 'flips_kv.png'
set title 'K/V perturbation before each flip (relative L2, mean over layers)'
set xlabel 'steps before the flip'
set ylabel 'relative difference solo vs batched'
set logscale y
plot for [k=7:22] 'flips_events.csv' every ::1 using (k - 23):k with points pt 7 ps 0.6 lc rgb '#4060c0' notitle
